"""Shared arithmetic of the search recipes: groups as a [n, G, g] view, stored rounding, errors.

Every helper works on float32 blocks ``x`` of shape [n, G, g] (a partial last MatMulNBits
block is padded with a copy of the block's first element, which changes neither its min nor
its max, and given zero weight) and returns per-block results of shape [n, G, 1].
"""

from __future__ import annotations

import numpy as np

from .. import reference
from ..scheme import Scheme
from ..values import QuantValues

F32 = np.float32


def as_blocks(w: np.ndarray, scheme: Scheme, importance: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(x [n, G, g], weights [1 or n, G, g]) for rows ``w`` [n, K] under ``scheme``."""
    n, k = w.shape
    g = scheme.group_of(k)
    groups = scheme.groups(k)
    pad = groups * g - k
    imp = np.ones(k, F32) if importance is None else np.asarray(importance, F32)
    if pad:
        w = np.concatenate([w, np.repeat(w[:, (groups - 1) * g : (groups - 1) * g + 1], pad, axis=1)], axis=1)
        imp = np.concatenate([imp, np.zeros(pad, F32)])
    return np.ascontiguousarray(w, F32).reshape(n, groups, g), imp.reshape(1, groups, g)


#: How a search recipe weighs each weight's squared error (besides its channel's importance):
#: ``none`` all alike; ``mag`` by rms(x) + |x| of its block, the weighting llama.cpp's K-quant
#: search uses without an importance matrix (a large weight's error counts more, so the search
#: does not clip the few large weights a small model depends on); ``sq`` by mean(x²) + x².
WEIGHTINGS = ("none", "mag", "sq")


def element_weights(x: np.ndarray, imp: np.ndarray, weighting: str) -> np.ndarray:
    """Weights of each element's squared error, [n, G, g] (or ``imp`` itself for ``none``)."""
    if weighting == "none":
        return imp
    if weighting == "mag":
        rms = np.sqrt(np.mean(x * x, axis=-1, keepdims=True))
        return (imp * (rms + np.abs(x))).astype(F32)
    if weighting == "sq":
        return (imp * (np.mean(x * x, axis=-1, keepdims=True) + x * x)).astype(F32)
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


def from_blocks(codes: np.ndarray, k: int) -> np.ndarray:
    """Codes [n, G, g] back to [n, K] (padding dropped)."""
    n = codes.shape[0]
    return np.ascontiguousarray(codes.reshape(n, -1)[:, :k])


def stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """The float32 value a scale (or offset) has once stored in ``dtype``."""
    return reference.stored_to_f32(reference.store_scale(x, dtype), dtype)


def safe(s: np.ndarray) -> np.ndarray:
    return np.where(s == 0, F32(1), s)


def signed_extreme(x: np.ndarray) -> np.ndarray:
    """The value of the largest |x| per block (first of equals)."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)


def weighted_error(x: np.ndarray, recon: np.ndarray, imp: np.ndarray) -> np.ndarray:
    d = x - recon
    return np.einsum("...i,...i->...", d * d, np.broadcast_to(imp, d.shape))[..., None]


def codes_dtype(scheme: Scheme) -> type:
    return np.int8 if scheme.code_range()[0] < 0 else np.uint8


def finish(scheme: Scheme, codes: np.ndarray, s: np.ndarray, zero: np.ndarray | None, k: int) -> QuantValues:
    """QuantValues from per-block results: codes [n, G, g], scale [n, G, 1], zero [n, G, 1]."""
    n, groups = s.shape[0], s.shape[1]
    zeros = None
    if zero is not None:
        zeros = zero.reshape(n, groups)
        zeros = zeros.astype(np.uint8) if scheme.zero_kind == "int" else zeros.astype(F32)
    return QuantValues(from_blocks(codes, k).astype(codes_dtype(scheme)), s.reshape(n, groups).astype(F32), zeros)
