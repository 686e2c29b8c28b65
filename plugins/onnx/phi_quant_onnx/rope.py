"""Rotary cos/sin caches in the layout ONNX Runtime's rotary kernels read.

Both ``GroupQueryAttention`` (``do_rotary=1``) and ``RotaryEmbedding`` take caches of shape
``[positions, rotary_dim / 2]``: row ``p`` holds ``cos(p * inv_freq)`` (and ``sin``) for the
NEOX (rotate-half) pairing, multiplied by the LongRoPE scale of its factor set
(``RopeSpec.mscale``: PhiMoE has one per set, Phi-3 one attention factor for both). Phi's
LongRoPE has two sets of frequencies: the short factors (used while the whole sequence fits the
original context) and the long ones; each set gets its own cache and the graph picks one at run
time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phi_quant.model.config import PhiConfig

__all__ = ["RopeCaches", "rope_caches", "cos_sin"]


@dataclass(frozen=True)
class RopeCaches:
    """float32 caches; ``long_*`` is None without LongRoPE.

    ``short_*`` covers positions [0, original context) for LongRoPE, else [0, context).
    ``long_*`` covers [0, context) and is used once the total sequence exceeds the original context.
    """

    short_cos: np.ndarray
    short_sin: np.ndarray
    long_cos: np.ndarray | None = None
    long_sin: np.ndarray | None = None
    original_context: int | None = None

    @property
    def half(self) -> int:
        return int(self.short_cos.shape[1])


def cos_sin(theta: float, rotary_dim: int, positions: int, factors=None, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin for positions [0, positions): inv_freq = 1 / (factor * theta^(2i/rotary_dim)).

    Computed in float32 like transformers' Phi3 rotary embedding, so fp32 exports match the
    oracle to rounding.
    """
    exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rotary_dim)
    base = np.float32(theta) ** exponents
    if factors is not None:
        base = np.asarray(factors, dtype=np.float32) * base
    inv_freq = (np.float32(1.0) / base).astype(np.float32)
    t = np.arange(positions, dtype=np.float32)
    freqs = np.outer(t, inv_freq.astype(np.float32)).astype(np.float32)
    cos = (np.cos(freqs) * np.float32(scale)).astype(np.float32)
    sin = (np.sin(freqs) * np.float32(scale)).astype(np.float32)
    return cos, sin


def rope_caches(config: PhiConfig, context_length: int | None = None) -> RopeCaches:
    """The caches the graph needs for ``config`` (``context_length`` defaults to max positions)."""
    rope = config.rope
    ctx = int(context_length or config.max_position_embeddings)
    if not rope.is_longrope:
        cos, sin = cos_sin(rope.theta, rope.rotary_dim, ctx)
        return RopeCaches(cos, sin)
    orig = int(rope.original_max_position or ctx)
    # Each factor set has its own cos/sin scale (PhiMoE's short/long mscale; Phi-3's one attention factor).
    short_cos, short_sin = cos_sin(rope.theta, rope.rotary_dim, min(orig, ctx), rope.short_factor, rope.mscale(False))
    long_cos, long_sin = cos_sin(rope.theta, rope.rotary_dim, max(ctx, orig), rope.long_factor, rope.mscale(True))
    return RopeCaches(short_cos, short_sin, long_cos, long_sin, original_context=orig)
