"""One typed description of a Phi3ForCausalLM-family model, normalised from ``config.json``.

Every consumer (oracle, backends, CLI) reads this instead of the raw dict, so the quirks of the
family (LongRoPE under its old ``su`` name, ``rope_parameters`` from transformers 5, partial
rotary, tied embeddings, GQA, a null sliding window) are resolved in exactly one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedModelError
from .config_check import PHI3_FIELDS, check_architectures, check_config

__all__ = ["RopeSpec", "PhiConfig", "normalize_config", "SUPPORTED_ARCHITECTURES"]

SUPPORTED_ARCHITECTURES = ("Phi3ForCausalLM",)

# Architectures that look related but compute something else: refused with a reason.
_REFUSED = {
    "Phi3SmallForCausalLM": "Phi-3-small uses block-sparse attention, GeGELU and muP scaling",
    "PhiMoEForCausalLM": "Phi-3.5-MoE is a mixture of experts with LayerNorm and biases",
    "PhiForCausalLM": "Phi-1/Phi-2 use LayerNorm, biases and a parallel attention/MLP block",
    "Phi3VForCausalLM": "Phi-3-vision carries an image encoder",
    "Phi4MMForCausalLM": "Phi-4-multimodal carries vision/speech encoders and LoRA adapters",
}


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding as Phi3 computes it.

    ``rotary_dim`` leading dims of each head rotate (NEOX / rotate_half style); the rest pass
    through. With ``scaling == "longrope"``, ``short_factor``/``long_factor`` (rotary_dim/2
    entries each) divide the inverse frequencies: transformers uses the long factors when the
    sequence is longer than ``original_max_position``; cos/sin are multiplied by
    ``attention_factor``.
    """

    theta: float
    rotary_dim: int
    scaling: str | None = None  # None or "longrope"
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    original_max_position: int | None = None
    attention_factor: float = 1.0

    @property
    def is_longrope(self) -> bool:
        return self.scaling == "longrope"


@dataclass(frozen=True)
class PhiConfig:
    """The normalised model description every part of phi-quant works from."""

    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeSpec
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    torch_dtype: str = "float32"
    family: str = "phi3"  # a best guess at the published model, for display only
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def qkv_rows(self) -> int:
        """Rows of the fused ``qkv_proj``: [Q | K | V]."""
        return self.q_size + 2 * self.kv_size

    @property
    def is_gqa(self) -> bool:
        return self.num_kv_heads != self.num_heads

    @property
    def partial_rotary_factor(self) -> float:
        return self.rope.rotary_dim / self.head_dim

    def parameter_count(self) -> int:
        """Exact number of parameters in the checkpoint (lm_head counted once when tied)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        per_layer = 2 * h + self.qkv_rows * h + h * self.q_size + 2 * i * h + h * i
        total = v * h + self.num_layers * per_layer + h
        if not self.tie_word_embeddings:
            total += v * h
        return total

    def quirks(self) -> list[str]:
        """Human-readable list of what is unusual about this model (for ``inspect``)."""
        out = []
        if self.is_gqa:
            out.append(f"grouped-query attention ({self.num_heads} query / {self.num_kv_heads} kv heads)")
        if self.rope.rotary_dim != self.head_dim:
            out.append(
                f"partial rotary: {self.rope.rotary_dim} of {self.head_dim} head dims rotate "
                f"(factor {self.partial_rotary_factor:g})"
            )
        if self.rope.is_longrope:
            out.append(
                f"LongRoPE: short/long factors ({len(self.rope.short_factor or ())} each), "
                f"original context {self.rope.original_max_position}, max {self.max_position_embeddings}, "
                f"attention factor {self.rope.attention_factor:.4f}"
            )
        if self.tie_word_embeddings:
            out.append("tied embeddings: lm_head reuses embed_tokens")
        if self.sliding_window is not None:
            out.append(f"sliding window {self.sliding_window}")
        if self.vocab_size and self.raw.get("_tokenizer_size") and self.raw["_tokenizer_size"] < self.vocab_size:
            out.append(f"vocabulary padded: {self.raw['_tokenizer_size']} tokens, {self.vocab_size} rows")
        out.append(f"rope theta {self.rope.theta:g}")
        return out


def _need(raw: dict[str, Any], key: str) -> Any:
    if key not in raw or raw[key] is None:
        raise UnsupportedModelError(f"config.json has no {key!r}; is this a Phi-3/Phi-4 checkpoint?")
    return raw[key]


def _rope_scaling(raw: dict[str, Any]) -> dict[str, Any] | None:
    # transformers 5 moved rope_scaling (and rope_theta) into rope_parameters.
    params = raw.get("rope_parameters")
    scaling = raw.get("rope_scaling")
    if scaling is None and isinstance(params, dict):
        kind = params.get("rope_type") or params.get("type")
        if kind and kind not in ("default",):
            scaling = params
    return scaling


def _guess_family(cfg: dict[str, Any], hidden: int, vocab: int, longrope: bool, partial: float) -> str:
    if vocab >= 200000:
        return "phi-4-mini"
    if vocab >= 100000:
        return "phi-4"
    if hidden >= 5000:
        return "phi-3-medium-128k" if longrope else "phi-3-medium-4k"
    if hidden == 3072:
        return "phi-3.5-mini / phi-3-mini-128k" if longrope else "phi-3-mini-4k"
    return "phi3-family (custom size)"


def normalize_config(raw: dict[str, Any], *, tokenizer_size: int | None = None, file: str = "config.json") -> PhiConfig:
    """Turn a raw ``config.json`` dict into a :class:`PhiConfig`, refusing what we cannot convert.

    Every field is checked by type and range first (:mod:`phi_quant.model.config_check`), so the
    arithmetic below only sees sane values; ``file`` is how refusals name the config.
    """
    archs = check_architectures(raw, file)
    model_type = raw.get("model_type")
    arch = archs[0] if archs else None
    if arch in _REFUSED:
        raise UnsupportedModelError(
            f"architecture {arch} is not supported: {_REFUSED[arch]}. "
            f"Supported: {', '.join(SUPPORTED_ARCHITECTURES)} (Phi-3/3.5-mini, Phi-3-medium, Phi-4, Phi-4-mini)."
        )
    if arch not in SUPPORTED_ARCHITECTURES and not (arch is None and model_type == "phi3"):
        raise UnsupportedModelError(
            f"architecture {arch or model_type or 'unknown'} is not supported. "
            f"Supported: {', '.join(SUPPORTED_ARCHITECTURES)} (Phi-3/3.5-mini, Phi-3-medium, Phi-4, Phi-4-mini)."
        )
    check_config(raw, file, PHI3_FIELDS)
    hidden = int(_need(raw, "hidden_size"))
    heads = int(_need(raw, "num_attention_heads"))
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    head_dim = int(raw.get("head_dim") or hidden // heads)
    if heads % kv_heads:
        raise UnsupportedModelError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    partial = float(raw.get("partial_rotary_factor", 1.0) or 1.0)
    params = raw.get("rope_parameters") if isinstance(raw.get("rope_parameters"), dict) else {}
    partial = float(params.get("partial_rotary_factor", partial) or partial)
    rotary_dim = int(head_dim * partial)
    theta = float(raw.get("rope_theta") or params.get("rope_theta") or 10000.0)
    max_pos = int(_need(raw, "max_position_embeddings"))
    scaling = _rope_scaling(raw)
    rope = RopeSpec(theta=theta, rotary_dim=rotary_dim)
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind in ("longrope", "su"):
            for key in ("short_factor", "long_factor"):
                if not isinstance(scaling.get(key), list):
                    raise UnsupportedModelError(
                        f"{file}: rope scaling {kind!r} needs {key}, a list of rotary_dim/2 = {rotary_dim // 2} numbers"
                    )
            short = tuple(float(x) for x in scaling["short_factor"])
            long = tuple(float(x) for x in scaling["long_factor"])
            if len(short) != rotary_dim // 2 or len(long) != rotary_dim // 2:
                raise UnsupportedModelError(
                    f"{file}: the LongRoPE short_factor/long_factor have {len(short)}/{len(long)} entries; expected "
                    f"rotary_dim/2 = {rotary_dim // 2} (head_dim {head_dim} x partial_rotary_factor {partial:g} / 2)"
                )
            orig = int(
                raw.get("original_max_position_embeddings")
                or scaling.get("original_max_position_embeddings")
                or max_pos
            )
            attn = scaling.get("attention_factor")
            if attn is None:
                # transformers prefers an explicit ``factor``; Phi configs omit it and use the ratio.
                factor = float(scaling.get("factor") or max_pos / orig)
                attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
            rope = RopeSpec(
                theta=theta,
                rotary_dim=rotary_dim,
                scaling="longrope",
                short_factor=short,
                long_factor=long,
                original_max_position=orig,
                attention_factor=float(attn),
            )
        elif kind not in (None, "default"):
            raise UnsupportedModelError(
                f"{file}: rope scaling type {kind!r} is not supported; Phi uses longrope (or the older name su)"
            )
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    vocab = int(_need(raw, "vocab_size"))
    raw = dict(raw)
    if tokenizer_size is not None:
        raw["_tokenizer_size"] = tokenizer_size
    return PhiConfig(
        architecture="Phi3ForCausalLM",
        hidden_size=hidden,
        num_layers=int(_need(raw, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=int(_need(raw, "intermediate_size")),
        vocab_size=vocab,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        max_position_embeddings=max_pos,
        rope=rope,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        sliding_window=raw.get("sliding_window"),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=raw.get("pad_token_id"),
        torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
        family=_guess_family(raw, hidden, vocab, rope.is_longrope, partial),
        raw=raw,
    )
