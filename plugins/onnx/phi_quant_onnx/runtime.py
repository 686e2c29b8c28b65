"""Open an exported folder in onnxruntime-genai for ``run`` and ``eval``.

Everything goes through onnxruntime-genai itself (``og.Model``, ``og.Tokenizer``,
``og.Generator``):

* ``logits(ids)``: one generator step over the whole sequence; the graph emits logits for every
  position and ``Generator.get_output("logits")`` returns all of them (``[1, T, vocab]``), so no
  separate onnxruntime session is needed;
* ``generate``: greedy search by genai (``do_sample=False``), stopping at the model's EOS ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from phi_quant.errors import RuntimeLoadError

from . import constants as C

__all__ = ["OnnxGenaiModel", "load"]


class OnnxGenaiModel:
    """A model folder opened in onnxruntime-genai (implements phi_quant's LoadedModel)."""

    def __init__(self, path: Path, options: dict[str, Any] | None = None):
        options = dict(options or {})
        try:
            import onnxruntime_genai as og
        except ImportError as exc:
            raise RuntimeLoadError("onnxruntime-genai is not installed: pip install onnxruntime-genai") from exc
        self._og = og
        self.path = Path(path)
        cfg_file = self.path / C.GENAI_CONFIG_FILE
        if not cfg_file.is_file():
            raise RuntimeLoadError(f"{self.path} has no {C.GENAI_CONFIG_FILE}; is it an onnx export of phi-quant?")
        self.genai_config = json.loads(cfg_file.read_text(encoding="utf-8"))
        model_cfg = self.genai_config["model"]
        self.vocab_size = int(model_cfg["vocab_size"])
        self.vocab_size_out = self.vocab_size  # rows of the graph's logits output
        self.context_length = int(options.get("context_length") or model_cfg["context_length"])
        eos = model_cfg.get("eos_token_id")
        self.eos_ids = [int(x) for x in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]
        try:
            config = og.Config(str(self.path))
            threads = options.get("threads")
            if threads:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": int(threads)}}}}))
            self.model = og.Model(config)
            self.tokenizer = og.Tokenizer(self.model)
        except Exception as exc:  # og raises RuntimeError with the ORT message
            raise RuntimeLoadError(f"onnxruntime-genai could not load {self.path}: {exc}") from exc

    # -- tokens -----------------------------------------------------------------------------
    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        self.tokenizer.update_options(add_special_tokens="true" if add_special_tokens else "false")
        return [int(x) for x in self.tokenizer.encode(text)]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(np.asarray(list(ids), dtype=np.int32))

    # -- inference --------------------------------------------------------------------------
    def _generator(self, max_length: int):
        og = self._og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=int(max_length), do_sample=False, num_beams=1)
        return og.Generator(self.model, params)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 [len(ids), vocab]: next-token logits at every position of one full-sequence run."""
        ids = [int(x) for x in ids]
        if not ids:
            raise ValueError("logits() needs at least one token")
        if len(ids) > self.context_length:
            raise ValueError(f"{len(ids)} tokens exceed the context length {self.context_length}")
        gen = self._generator(len(ids) + 1)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        out = np.array(gen.get_output(C.LOGITS), dtype=np.float32)
        return out.reshape(len(ids), -1)[:, : self.vocab_size]

    def incremental_logits(self, ids: Sequence[int], continuation: Sequence[int]) -> np.ndarray:
        """Logits through the KV cache: float32 [1 + len(continuation), vocab].

        Row 0 is the last position of the prompt run; row i is the step that appended
        ``continuation[i-1]`` alone, reading every earlier position from genai's KV cache.
        """
        ids, continuation = [int(x) for x in ids], [int(x) for x in continuation]
        gen = self._generator(len(ids) + len(continuation) + 1)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        rows = [np.array(gen.get_output(C.LOGITS), dtype=np.float32).reshape(-1, self.vocab_size_out)[-1]]
        for tok in continuation:
            gen.append_tokens(np.asarray([tok], dtype=np.int32))
            rows.append(np.array(gen.get_output(C.LOGITS), dtype=np.float32).reshape(-1, self.vocab_size_out)[-1])
        return np.stack(rows)[:, : self.vocab_size]

    def generate_ids(self, ids: Sequence[int], max_new_tokens: int = 32) -> list[int]:
        """Greedy continuation of ``ids`` (new tokens only), stopping at EOS or ``max_new_tokens``."""
        ids = [int(x) for x in ids]
        gen = self._generator(min(self.context_length, len(ids) + int(max_new_tokens)))
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        new: list[int] = []
        while not gen.is_done() and len(new) < max_new_tokens:
            gen.generate_next_token()
            tok = int(gen.get_next_tokens()[0])
            new.append(tok)
            if tok in self.eos_ids:
                break
        return new

    def generate(self, prompt: str, max_new_tokens: int = 32, *, chat: bool = False) -> str:
        if chat:
            text = self.tokenizer.apply_chat_template(json.dumps([{"role": "user", "content": prompt}]), add_generation_prompt=True)
            ids = self.tokenize(text, add_special_tokens=False)
        else:
            ids = self.tokenize(prompt, add_special_tokens=True)
        new = [t for t in self.generate_ids(ids, max_new_tokens) if t not in self.eos_ids]
        return self.detokenize(new)

    def close(self) -> None:
        self.tokenizer = None
        self.model = None


def load(path: Path, options: dict[str, Any] | None = None) -> OnnxGenaiModel:
    return OnnxGenaiModel(path, options)
