"""An exported folder opened with mlx-lm (``mlx_lm.load``), for ``run``, ``eval`` and tests.

Logits come from one call of the model on the whole sequence (no cache), as float32
``[T, vocab_size]``; generation is ``mlx_lm.generate`` with its default greedy sampler.

LongRoPE (see ``config_json.py``): plain mlx-lm applies ``rope_scaling.long_factor`` at every
length. The ``longrope`` load option says which factors this wrapper gives mlx-lm's rope layers:

- ``"auto"`` (default): per call, like transformers: the short factors when the sequence
  (prompt plus new tokens, for ``generate``) fits the original context, the long ones beyond.
- ``"config"``: exactly what ``mlx_lm.load`` + ``mlx_lm.generate`` compute from config.json.
- ``"short"`` / ``"long"``: one set for every length.

A ``context_length`` load option fixes the choice as llama.cpp does: short when it is at most
the original context, long otherwise.

PhiMoE in float16/bfloat16 on a machine without Metal: mlx's CPU ``gather_mm`` (the unquantized
SwitchGLU experts' matmul; ``mlx/backend/cpu/masked_mm.cpp``) only implements float32, so plain
mlx-lm fails there. This wrapper then runs those matmuls in float32 on the exactly upcast
weights and casts their output back to the model's dtype (``float32_experts`` says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from phi_quant.errors import RuntimeLoadError

__all__ = ["MLXModel"]


class MLXModel:
    """:class:`phi_quant.types.LoadedModel` backed by mlx-lm."""

    def __init__(self, path: Path, options: dict | None = None):
        try:
            import mlx.core as mx
            from mlx_lm import load
        except ImportError as exc:
            raise RuntimeLoadError(
                f"mlx-lm is not importable ({exc}); install it: pip install mlx-lm (on Linux: pip install 'mlx[cpu]' mlx-lm)"
            ) from exc
        self.path = Path(path)
        self.options = dict(options or {})
        self._mx = mx
        try:
            self.model, self.tokenizer, self.config = load(str(self.path), return_config=True)
        except Exception as exc:  # mlx-lm raises ValueError/FileNotFoundError/KeyError
            raise RuntimeLoadError(f"mlx-lm could not load {self.path}: {exc}; was it written by the mlx backend?") from exc
        self.vocab_size = int(self.config["vocab_size"])
        self.float32_experts = _float32_experts_on_cpu(self.model, mx)
        self._rope = _LongRopeSwitch.from_model(self.model, self.config, mx)
        policy = str(self.options.get("longrope") or "auto")
        ctx = self.options.get("context_length")
        if ctx is not None and self._rope is not None and policy == "auto":
            policy = "short" if int(ctx) <= self._rope.original else "long"
        if policy not in ("auto", "config", "short", "long"):
            raise RuntimeLoadError(f"longrope option {policy!r}: choose auto, config, short or long")
        self.longrope = policy if self._rope is not None else None
        if self._rope is not None and policy in ("short", "long"):
            self._rope.use(policy)

    def uses_long_factors(self, total_tokens: int) -> bool | None:
        """Whether a sequence of ``total_tokens`` runs with long factors (None: no LongRoPE)."""
        if self._rope is None:
            return None
        if self.longrope == "auto":
            return total_tokens > self._rope.original
        if self.longrope == "config":
            return self._rope.config_is_long
        return self.longrope == "long"

    def _prepare(self, total_tokens: int) -> None:
        if self._rope is not None and self.longrope == "auto":
            self._rope.use("long" if total_tokens > self._rope.original else "short")

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        mx = self._mx
        if len(ids) == 0:
            raise RuntimeLoadError("logits need at least one token")
        self._prepare(len(ids))
        out = self.model(mx.array([list(ids)], dtype=mx.int32))
        out = out[0].astype(mx.float32)
        mx.eval(out)
        arr = np.array(out, dtype=np.float32)
        return arr[:, : self.vocab_size]

    def generate(self, prompt: str, max_new_tokens: int = 32, *, chat: bool = False) -> str:
        from mlx_lm import generate

        if chat:
            if getattr(self.tokenizer, "chat_template", None) is None:
                raise RuntimeLoadError(f"{self.path} has no chat template; run without --chat")
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict):  # transformers 5 may return a BatchEncoding
                ids = ids["input_ids"]
            prompt_in: str | list[int] = list(ids)
        else:
            prompt_in = self.tokenize(prompt, add_special_tokens=False) or [self.tokenizer.bos_token_id or 0]
        self._prepare(len(prompt_in) + max_new_tokens)
        return generate(self.model, self.tokenizer, prompt_in, max_tokens=max_new_tokens, verbose=False,
                        logits_processors=[self.mask_padding])

    @property
    def tokenizer_size(self) -> int:
        """Ids the tokenizer can decode; embedding rows past it are padding (Phi-3: 32011 of 32064)."""
        return max(self.tokenizer._tokenizer.get_vocab().values()) + 1

    def mask_padding(self, tokens, logits):
        """mlx-lm logits processor: never pick a padded id (mlx-lm's detokenizers fail on them)."""
        n = self.tokenizer_size
        if logits.shape[-1] > n:
            logits[..., n:] = -float("inf")
        return logits

    def close(self) -> None:
        self.model = None
        self.tokenizer = None


class _LongRopeSwitch:
    """Swaps the frequency table of mlx-lm's ``SuScaledRoPE`` layers between short and long factors
    (and, for phimoe, whose config gives ``short_mscale``/``long_mscale``, the scale that goes with them)."""

    def __init__(self, layers: list, tables: dict, original: int, config_is_long: bool, scales: dict | None = None):
        self.layers, self.tables, self.original, self.config_is_long = layers, tables, original, config_is_long
        self.scales = scales

    @classmethod
    def from_model(cls, model, config: dict, mx) -> "_LongRopeSwitch | None":
        scaling = config.get("rope_scaling") or {}
        if scaling.get("type") not in ("longrope", "su"):
            return None
        ropes = [layer.self_attn.rope for layer in model.layers]
        if not ropes or not all(hasattr(r, "_freqs") and hasattr(r, "dim") for r in ropes):
            raise RuntimeLoadError("this mlx-lm version's phi3 rope has no _freqs table; load with longrope=config")
        dims = int(ropes[0].dim)
        base = float(config.get("rope_theta", 10000.0))
        freqs = base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
        short = list(scaling["short_factor"])
        long = list((config.get("phi_quant") or {}).get("original_long_factor") or scaling["long_factor"])
        tables = {"short": mx.array(short, dtype=mx.float32) * freqs, "long": mx.array(long, dtype=mx.float32) * freqs}
        config_is_long = list(scaling["long_factor"]) == long and short != long
        original = int(config.get("original_max_position_embeddings", 4096))
        scales = None
        if "short_mscale" in scaling and "long_mscale" in scaling:  # mlx-lm's phimoe: SuScaledRoPE._scale
            if not all(hasattr(r, "_scale") for r in ropes):
                raise RuntimeLoadError("this mlx-lm version's phimoe rope has no _scale; load with longrope=config")
            long_m = (config.get("phi_quant") or {}).get("original_long_mscale", scaling["long_mscale"])
            scales = {"short": float(scaling["short_mscale"]), "long": float(long_m)}
        return cls(ropes, tables, original, config_is_long, scales)

    def use(self, which: str) -> None:
        for rope in self.layers:
            rope._freqs = self.tables[which]
            if self.scales is not None:
                rope._scale = self.scales[which]


def _float32_experts_on_cpu(model, mx) -> bool:
    """Without Metal, run unquantized half-precision SwitchGLU projections in float32 (see module doc)."""
    try:
        from mlx_lm.models.switch_layers import SwitchLinear
    except ImportError:
        return False
    if mx.metal.is_available():
        return False
    changed = False
    for layer in getattr(model, "layers", []):
        mlp = getattr(getattr(layer, "block_sparse_moe", None), "switch_mlp", None)
        if mlp is None:
            continue
        for name in ("gate_proj", "up_proj", "down_proj"):
            proj = getattr(mlp, name, None)
            if isinstance(proj, SwitchLinear) and proj.weight.dtype != mx.float32:
                setattr(mlp, name, _Float32Switch(proj, mx))
                changed = True
    return changed


class _Float32Switch:
    """A SwitchLinear whose gather_mm runs in float32 and returns the input's dtype."""

    def __init__(self, inner, mx):
        inner.weight = inner.weight.astype(mx.float32)
        if "bias" in inner:
            inner.bias = inner.bias.astype(mx.float32)
        self.inner, self._mx = inner, mx

    def __call__(self, x, indices, sorted_indices=False):
        return self.inner(x.astype(self._mx.float32), indices, sorted_indices=sorted_indices).astype(x.dtype)
