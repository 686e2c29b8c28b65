"""The one typed model description every part of phi-quant works from, and the parsing helpers
architecture modules share.

Each architecture module turns a raw ``config.json`` into a :class:`PhiConfig` in one function
(``parse_config``); the quirks common to the Phi family (LongRoPE under its old ``su`` name,
``rope_parameters`` from transformers 5, partial rotary, a list of end-of-sequence ids) are
resolved here once, so every module reads them the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    from .base import Architecture

__all__ = ["RopeSpec", "PhiConfig", "need", "rope_parameters", "rope_scaling", "parse_rope", "eos_ids", "decoder_fields"]


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding as the Phi family computes it.

    ``rotary_dim`` leading dims of each head rotate (NEOX / rotate_half style); the rest pass
    through. With ``scaling == "longrope"``, ``short_factor``/``long_factor`` (rotary_dim/2
    entries each) divide the inverse frequencies: transformers uses the long factors when the
    sequence is longer than ``original_max_position``; cos/sin are multiplied by
    ``attention_factor``, or, where the config gives them (Phi-3.5-MoE), by ``short_mscale`` /
    ``long_mscale`` with the factor set they belong to (:meth:`mscale`).
    """

    theta: float
    rotary_dim: int
    scaling: str | None = None  # None or "longrope"
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    original_max_position: int | None = None
    attention_factor: float = 1.0
    short_mscale: float | None = None
    long_mscale: float | None = None

    @property
    def is_longrope(self) -> bool:
        return self.scaling == "longrope"

    def uses_long_factors(self, seq_len: int) -> bool:
        """Whether a sequence of ``seq_len`` tokens takes the long LongRoPE factors."""
        return self.is_longrope and seq_len > (self.original_max_position or seq_len)

    def mscale(self, long: bool) -> float:
        """The cos/sin scale that goes with the short (``long=False``) or long factor set."""
        own = self.long_mscale if long else self.short_mscale
        return float(own) if own is not None else self.attention_factor


@dataclass(frozen=True)
class PhiConfig:
    """The normalised model description every part of phi-quant works from.

    ``arch_name`` names the architecture module (:mod:`phi_quant.arch`) that parsed it and that
    answers every question about its tensors: ``config.arch`` is that module's object.
    ``architecture`` is the Hugging Face class name the checkpoint declared.

    The fields after ``arch_name`` describe what sets a layout apart from the dense Phi-3 one;
    their defaults are Phi-3's, so a dense architecture never sets them. ``rms_norm_eps`` is
    the epsilon of the model's norms whichever ``norm`` kind they are (transformers' PhiMoE
    reads its LayerNorm epsilon from the same key).
    """

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
    arch_name: str = "phi3"
    norm: str = "rms"  # "rms" (RMSNorm, scale only) or "layer" (LayerNorm with a shift)
    attention_bias: bool = False  # q/k/v/o projections carry biases
    lm_head_bias: bool = False
    num_experts: int = 0  # experts per mixture-of-experts layer; 0: a dense MLP
    experts_per_token: int = 0  # experts each token is routed to
    router_jitter: float = 0.0  # sparsemixer's jitter epsilon: how close to the best a logit must be to share

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def arch(self) -> "Architecture":
        """The architecture module's object: stream plan, tensor names, sizes, oracle."""
        from .registry import get_architecture

        return get_architecture(self.arch_name)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def qkv_rows(self) -> int:
        """Rows of a fused ``qkv_proj``: [Q | K | V]."""
        return self.q_size + 2 * self.kv_size

    @property
    def is_gqa(self) -> bool:
        return self.num_kv_heads != self.num_heads

    @property
    def partial_rotary_factor(self) -> float:
        return self.rope.rotary_dim / self.head_dim

    def parameter_count(self) -> int:
        """Exact number of parameters in the checkpoint (lm_head counted once when tied)."""
        return self.arch.parameter_count(self)

    def active_parameter_count(self) -> int:
        """Parameters one token passes through (all of them in a dense model)."""
        return self.arch.active_parameter_count(self)

    def quirks(self) -> list[str]:
        """Human-readable list of what is unusual about this model (for ``inspect``)."""
        return self.arch.quirks(self)


# -- helpers for the architecture modules' parse_config -------------------------------------------

def need(raw: dict[str, Any], key: str) -> Any:
    """``raw[key]``, or a one-line refusal naming the missing key."""
    if key not in raw or raw[key] is None:
        raise UnsupportedModelError(f"config.json has no {key!r}; is this a Phi-3/Phi-4 checkpoint?")
    return raw[key]


def rope_parameters(raw: dict[str, Any]) -> dict[str, Any]:
    """transformers 5's ``rope_parameters`` (rope_theta, partial_rotary_factor, scaling), or ``{}``."""
    params = raw.get("rope_parameters")
    return params if isinstance(params, dict) else {}


def rope_scaling(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The rope scaling dict: ``rope_scaling``, else transformers 5's ``rope_parameters`` when it scales."""
    params = raw.get("rope_parameters")
    scaling = raw.get("rope_scaling")
    if scaling is None and isinstance(params, dict):
        kind = params.get("rope_type") or params.get("type")
        if kind and kind not in ("default",):
            scaling = params
    return scaling


def parse_rope(raw: dict[str, Any], rotary_dim: int, theta: float, max_pos: int,
               file: str = "config.json", *, mscale: bool = False) -> RopeSpec:
    """Plain RoPE or LongRoPE (``longrope``/``su``) from the config; any other scaling is refused.

    The fields were checked by type and range before (:mod:`phi_quant.arch.config_fields`); what
    is refused here is a combination: another scaling type, missing or miscounted factors.
    ``mscale``: the architecture scales cos/sin by the config's ``short_mscale``/``long_mscale``
    (PhiMoE), which must then be numbers; Phi-3 ignores those keys.
    """
    scaling = rope_scaling(raw)
    if not scaling:
        return RopeSpec(theta=theta, rotary_dim=rotary_dim)
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in (None, "default"):
        return RopeSpec(theta=theta, rotary_dim=rotary_dim)
    if kind not in ("longrope", "su"):
        raise UnsupportedModelError(
            f"{file}: rope scaling type {kind!r} is not supported; Phi uses longrope (or the older name su)"
        )
    for key in ("short_factor", "long_factor"):
        if not isinstance(scaling.get(key), list):
            raise UnsupportedModelError(
                f"{file}: rope scaling {kind!r} needs {key}, a list of rotary_dim/2 = {rotary_dim // 2} numbers"
            )
    short = tuple(float(x) for x in scaling["short_factor"])
    long = tuple(float(x) for x in scaling["long_factor"])
    if len(short) != rotary_dim // 2 or len(long) != rotary_dim // 2:
        head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
        raise UnsupportedModelError(
            f"{file}: the LongRoPE short_factor/long_factor have {len(short)}/{len(long)} entries; expected "
            f"rotary_dim/2 = {rotary_dim // 2} (head_dim {head_dim} x partial_rotary_factor "
            f"{rotary_dim / head_dim:g} / 2)"
        )
    orig = int(raw.get("original_max_position_embeddings") or scaling.get("original_max_position_embeddings") or max_pos)
    attn = scaling.get("attention_factor")
    if attn is None:
        # transformers prefers an explicit ``factor``; Phi configs omit it and use the ratio.
        factor = float(scaling.get("factor") or max_pos / orig)
        attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    scales: dict[str, float] = {}
    if mscale:
        for key in ("short_mscale", "long_mscale"):
            value = scaling.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UnsupportedModelError(f"LongRoPE {key} must be a number, not {value!r}")
            scales[key] = float(value)
    return RopeSpec(
        theta=theta,
        rotary_dim=rotary_dim,
        scaling="longrope",
        short_factor=short,
        long_factor=long,
        original_max_position=orig,
        attention_factor=float(attn),
        **scales,
    )


def eos_ids(raw: dict[str, Any]) -> tuple[int, ...]:
    """``eos_token_id`` as a tuple (configs store one id or a list)."""
    eos = raw.get("eos_token_id")
    return tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())


def decoder_fields(raw: dict[str, Any], *, tokenizer_size: int | None, default_theta: float,
                   mscale: bool = False, file: str = "config.json") -> dict[str, Any]:
    """The :class:`PhiConfig` fields every Phi decoder reads the same way: sizes, attention heads,
    RoPE (``mscale``: with PhiMoE's short/long mscales), special ids, stored dtype, and ``raw``
    (with the tokenizer's size). An architecture's ``parse_config`` checks its field table first and
    adds its own fields; ``file`` is how refusals name the config."""
    hidden = int(need(raw, "hidden_size"))
    heads = int(need(raw, "num_attention_heads"))
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    head_dim = int(raw.get("head_dim") or hidden // heads)
    if heads % kv_heads:
        raise UnsupportedModelError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    params = rope_parameters(raw)
    partial = float(raw.get("partial_rotary_factor", 1.0) or 1.0)
    partial = float(params.get("partial_rotary_factor", partial) or partial)
    theta = float(raw.get("rope_theta") or params.get("rope_theta") or default_theta)
    max_pos = int(need(raw, "max_position_embeddings"))
    rope = parse_rope(raw, int(head_dim * partial), theta, max_pos, file, mscale=mscale)
    vocab = int(need(raw, "vocab_size"))
    raw = dict(raw)
    if tokenizer_size is not None:
        raw["_tokenizer_size"] = tokenizer_size
    return dict(
        hidden_size=hidden,
        num_layers=int(need(raw, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=int(need(raw, "intermediate_size")),
        vocab_size=vocab,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        max_position_embeddings=max_pos,
        rope=rope,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        sliding_window=raw.get("sliding_window"),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=eos_ids(raw),
        pad_token_id=raw.get("pad_token_id"),
        torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
        raw=raw,
    )
