"""Rotary position embedding of Phi3 as OpenVINO ops, LongRoPE included.

transformers picks the LongRoPE factors per forward call: the long factors when the largest
position in the call is at or past ``original_max_position_embeddings`` (seq_len = max(pos) + 1 >
original), the short ones otherwise; cos and sin are scaled by the attention factor, or by the
mscale of the chosen set where the config has one (Phi-3.5-MoE, :meth:`RopeSpec.mscale`). The graph
does the same with a Select on ``max(position_ids)``, so a prompt past the original context, and
a generation that crosses it, follow transformers step for step.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
from openvino import opset13 as ops

from phi_quant.model.config import RopeSpec

__all__ = ["inverse_frequencies", "cos_sin", "apply_rotary"]


def inverse_frequencies(rope: RopeSpec, factors: tuple[float, ...] | None = None) -> np.ndarray:
    """inv_freq[i] = 1 / (factor[i] * theta^(2i / rotary_dim)), in float32 as transformers computes it."""
    dim = rope.rotary_dim
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    base = np.power(np.float32(rope.theta), exponent, dtype=np.float32)
    if factors is not None:
        base = np.asarray(factors, dtype=np.float32) * base
    return (np.float32(1.0) / base).astype(np.float32)


def _i64(values) -> ov.Node:
    return ops.constant(np.array(values, dtype=np.int64))


def cos_sin(rope: RopeSpec, position_ids: ov.Output) -> tuple[ov.Output, ov.Output]:
    """cos and sin [B, 1, T, rotary_dim] for ``position_ids`` [B, T]."""
    if rope.is_longrope:
        short = ops.constant(inverse_frequencies(rope, rope.short_factor), name="rope.inv_freq_short")
        long = ops.constant(inverse_frequencies(rope, rope.long_factor), name="rope.inv_freq_long")
        seq_len = ops.add(ops.reduce_max(position_ids, _i64([0, 1]), keep_dims=False), _i64(1))
        use_long = ops.greater(seq_len, _i64(int(rope.original_max_position)), name="rope.use_long_factors")
        inv_freq = ops.select(use_long, long, short, name="rope.inv_freq")
    else:
        inv_freq = ops.constant(inverse_frequencies(rope), name="rope.inv_freq")
    pos = ops.unsqueeze(ops.convert(position_ids, ov.Type.f32), _i64([2]))  # [B, T, 1]
    freqs = ops.multiply(pos, inv_freq)  # [B, T, rd/2]
    emb = ops.concat([freqs, freqs], axis=-1)  # [B, T, rd]
    cos, sin = ops.cos(emb), ops.sin(emb)
    if rope.is_longrope and rope.mscale(True) != rope.mscale(False):
        # Phi-3.5-MoE: each factor set has its own mscale, chosen with it
        factor = ops.select(use_long, ops.constant(np.float32(rope.mscale(True))),
                            ops.constant(np.float32(rope.mscale(False))), name="rope.mscale")
        cos, sin = ops.multiply(cos, factor), ops.multiply(sin, factor)
    elif rope.mscale(False) != 1.0:
        factor = ops.constant(np.float32(rope.mscale(False)))
        cos, sin = ops.multiply(cos, factor), ops.multiply(sin, factor)
    axis = _i64([1])
    return ops.unsqueeze(cos, axis, name="rope.cos"), ops.unsqueeze(sin, axis, name="rope.sin")


def _rotate_half(x: ov.Output, half: int) -> ov.Output:
    step, axis = _i64([1]), _i64([3])
    first = ops.slice(x, _i64([0]), _i64([half]), step, axis)
    second = ops.slice(x, _i64([half]), _i64([2 * half]), step, axis)
    return ops.concat([ops.negative(second), first], axis=-1)


def apply_rotary(x: ov.Output, cos: ov.Output, sin: ov.Output, rotary_dim: int, head_dim: int) -> ov.Output:
    """NEOX-style rotation of the first ``rotary_dim`` dims of x [B, H, T, head_dim]; the rest pass."""
    if rotary_dim == head_dim:
        rot, rest = x, None
    else:
        step, axis = _i64([1]), _i64([3])
        rot = ops.slice(x, _i64([0]), _i64([rotary_dim]), step, axis)
        rest = ops.slice(x, _i64([rotary_dim]), _i64([head_dim]), step, axis)
    out = ops.add(ops.multiply(rot, cos), ops.multiply(_rotate_half(rot, rotary_dim // 2), sin))
    return out if rest is None else ops.concat([out, rest], axis=-1)
