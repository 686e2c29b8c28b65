"""A GGUF opened in llama-cpp-python, behind phi-quant's :class:`LoadedModel` protocol.

The LongRoPE choice is explicit. llama.cpp picks the short or the long factors once, from the
context it is loaded with (long when n_ctx > rope.scaling.original_context_length, and n_ctx is
rounded up to a multiple of 256), while transformers picks them per sequence. Two policies:

* ``context_length=N`` given: one context of N tokens, factors as llama.cpp chooses for N (what a
  deployment with ``-c N`` gets).
* default (``"auto"``): match transformers. A sequence no longer than the original context runs
  in a short-factor context; a longer one in a context >= its length (long factors). When
  llama.cpp's 256-token rounding would push a small original context into the long regime, the
  original context length is overridden at load time (it selects the factors and nothing else
  here: no YaRN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from phi_quant.errors import RuntimeLoadError

from .constants import IMATRIX_FILE, GGMLType, Key, arch_key

__all__ = ["LlamaCppModel", "find_gguf", "CTX_ALIGN"]

#: llama.cpp rounds n_ctx up to a multiple of this (``GGML_PAD(n_ctx, 256)`` in llama-context.cpp).
CTX_ALIGN = 256


def find_gguf(path: Path) -> Path:
    """The GGUF file in an exported directory (or ``path`` itself when it is a file)."""
    path = Path(path)
    if path.is_file():
        return path
    files = sorted(p for p in path.glob("*.gguf") if not p.name.startswith(".") and p.name != IMATRIX_FILE)
    if len(files) != 1:
        raise RuntimeLoadError(
            f"{path} holds {len(files)} .gguf files; expected exactly one (a directory written by phi-quant quantize --backend llamacpp)"
        )
    return files[0]


def _pad(n: int) -> int:
    return (n + CTX_ALIGN - 1) // CTX_ALIGN * CTX_ALIGN


class LlamaCppModel:
    """LoadedModel over ``llama_cpp.Llama`` (CPU unless ``n_gpu_layers`` is given)."""

    def __init__(self, path: Path, options: dict[str, Any] | None = None):
        options = dict(options or {})
        self.path = find_gguf(path)
        self.threads = options.get("threads")
        self.n_gpu_layers = int(options.get("n_gpu_layers", 0))
        self.fixed_ctx = options.get("context_length")
        kv = str(options.get("kv_cache_type", "f32")).upper()
        if kv not in ("F32", "F16", "Q8_0"):
            raise RuntimeLoadError(f"kv_cache_type {kv!r}: use f32 (exact, default), f16 or q8_0")
        self.kv_type = int(GGMLType[kv])
        from gguf import GGUFReader

        reader = GGUFReader(str(self.path))
        f = reader.fields

        def scalar(key: str, default: Any = None) -> Any:
            return f[key].contents() if key in f else default

        self.arch = str(scalar(Key.ARCHITECTURE, "phi3"))
        self.n_ctx_train = int(scalar(arch_key(Key.CONTEXT_LENGTH, self.arch), 4096))
        self.orig_ctx = int(scalar(arch_key(Key.ROPE_ORIG_CONTEXT, self.arch), self.n_ctx_train))
        self.longrope = any(t.name == "rope_factors_long.weight" for t in reader.tensors)
        self.vocab_size = len(f[Key.TOKENS].data)
        self.chat_template = scalar(Key.CHAT_TEMPLATE)
        tokens = f[Key.TOKENS]
        self._token_text = lambda i: bytes(tokens.parts[tokens.data[i]]).decode("utf-8", "replace")
        self.bos_id = scalar(Key.BOS_ID)
        self.eos_id = scalar(Key.EOS_ID)
        self.stop_ids = set(f[Key.STOP_IDS].contents()) if Key.STOP_IDS in f else set()
        del reader
        self._llm = None
        self._llm_key: tuple | None = None
        self._ensure(1)

    # -- context selection ------------------------------------------------------------------
    def context_for(self, n_tokens: int) -> tuple[int, int | None]:
        """(n_ctx, original-context override or None) used to run ``n_tokens`` tokens."""
        if self.fixed_ctx:
            n_ctx = int(self.fixed_ctx)
            if n_tokens > n_ctx:
                raise RuntimeLoadError(f"{n_tokens} tokens do not fit the context of {n_ctx} given with context_length")
            return n_ctx, None
        if self.longrope and n_tokens <= self.orig_ctx:
            n_ctx = min(self.orig_ctx, 4096)
            return n_ctx, (_pad(n_ctx) if _pad(n_ctx) > self.orig_ctx else None)
        n_ctx = max(min(self.n_ctx_train, 4096), n_tokens)
        if self.longrope:
            n_ctx = max(n_ctx, self.orig_ctx + 1)
        return n_ctx, None

    def uses_long_factors(self, n_tokens: int) -> bool:
        """Whether llama.cpp runs ``n_tokens`` with the LongRoPE long factors under this policy."""
        n_ctx, override = self.context_for(n_tokens)
        return self.longrope and _pad(n_ctx) > (override or self.orig_ctx)

    def _ensure(self, n_tokens: int):
        key = self.context_for(n_tokens)
        if self._llm is not None and self._llm_key == key:
            return self._llm
        self.close()
        n_ctx, override = key
        from llama_cpp import Llama

        kwargs: dict[str, Any] = dict(
            model_path=str(self.path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), logits_all=True,
            n_gpu_layers=self.n_gpu_layers, verbose=False, seed=0, type_k=self.kv_type, type_v=self.kv_type,
        )
        if self.threads:
            kwargs["n_threads"] = kwargs["n_threads_batch"] = int(self.threads)
        if override:
            kwargs["kv_overrides"] = {arch_key(Key.ROPE_ORIG_CONTEXT, self.arch): int(override)}
        try:
            self._llm = Llama(**kwargs)
        except Exception as e:  # llama-cpp-python raises ValueError with no detail
            raise RuntimeLoadError(f"llama.cpp could not load {self.path}: {e}") from e
        self._llm_key = key
        return self._llm

    def _loaded(self):
        """Whichever context is open (tokenization does not depend on the context size)."""
        return self._llm if self._llm is not None else self._ensure(1)

    # -- LoadedModel ------------------------------------------------------------------------
    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids for ``text``; special tokens written in the text are recognised (``<|user|>``)."""
        return list(self._loaded().tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._loaded().detokenize(list(ids), special=True).decode("utf-8", errors="replace")

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 [len(ids), vocab] logits from one full-sequence run (every position)."""
        ids = [int(i) for i in ids]
        if not ids:
            return np.zeros((0, self.vocab_size), dtype=np.float32)
        llm = self._ensure(len(ids))
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)

    def is_end(self, token: int) -> bool:
        import llama_cpp

        if int(token) in self.stop_ids:
            return True
        return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(self._loaded().model), int(token)))

    def render_chat(self, prompt: str) -> str:
        """The prompt in the model's chat template (the one stored in the GGUF)."""
        if not self.chat_template:
            raise RuntimeLoadError(f"{self.path.name} has no chat template; run without chat mode")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        bos = self._token_text(self.bos_id) if self.bos_id is not None else ""
        eos = self._token_text(self.eos_id) if self.eos_id is not None else ""
        return env.from_string(self.chat_template).render(
            messages=[{"role": "user", "content": prompt}], add_generation_prompt=True, bos_token=bos, eos_token=eos
        )

    def generate(self, prompt: str, max_new_tokens: int = 32, *, chat: bool = False) -> str:
        """Greedy continuation of ``prompt`` (in the chat template when ``chat``), stopping at end tokens."""
        text = self.render_chat(prompt) if chat else prompt
        ids = self.tokenize(text, add_special_tokens=True)
        new = self.generate_ids(ids, max_new_tokens)
        return self.detokenize([t for t in new if not self.is_end(t)])

    def generate_ids(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy token ids after ``ids`` (end token included when reached)."""
        ids = [int(i) for i in ids]
        llm = self._ensure(len(ids) + max_new_tokens)
        llm.reset()
        llm.eval(ids)
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(nxt)
            if self.is_end(nxt):
                break
            llm.eval([nxt])
        return out

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None
            self._llm_key = None

    def __enter__(self) -> "LlamaCppModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """What is loaded: file, (n_ctx, original-context override) of the open context, LongRoPE."""
        return {"file": str(self.path), "context": self._llm_key, "longrope": self.longrope, "original_context": self.orig_ctx}
