"""``clip``: per group, the range that minimises the (weighted) reconstruction error.

Round-to-nearest maps a group's extreme values onto the end codes, so one outlier stretches the
step for every other weight. ``clip`` tries ranges shrunk by each factor of a grid (1.0 down to
``min_shrink``) and keeps, per group, the one with the least error Σ wᵢ (xᵢ - x̂ᵢ)², where wᵢ is
the importance of input channel i (:attr:`RecipeContext.importance`; 1 without it). Then it
refits the stored values to the chosen codes by least squares and keeps the refit where it
lowers the error:

- fixed zero (Q4_0, Q8_0, symmetric MatMulNBits/NNCF): the scale maps the group's signed extreme
  onto the low end code or onto the high one (both are tried), times the shrink factor;
  refit s = Σ w x (q-z) / Σ w (q-z)².
- integer zero (asymmetric MatMulNBits/NNCF): the range is shrunk about its centre and widened to
  hold 0 (so the zero point is a valid code); refit alternates s as above and
  z = round(Σ w (q - x/s) / Σ w).
- offset (ggml Q4_1's m, mlx's bias): the range is shrunk about its centre; refit solves the 2×2
  least-squares problem for (s, m).

Every candidate is evaluated with its scale (and offset) rounded to the stored dtype, so the
codes are the best ones for what the file holds. Cost: one quantize-dequantize pass per grid
point (two for fixed zero), about ``len(grid)`` times RTN's arithmetic.
"""

from __future__ import annotations

import numpy as np

from ..scheme import ZERO_FIXED, ZERO_INT, Scheme
from ..values import QuantValues
from .base import Recipe, RecipeContext
from .blocks import F32, as_blocks, element_weights, finish, safe, signed_extreme, stored, weighted_error

__all__ = ["Clip", "refit_fixed", "refit_int", "refit_offset"]


def _codes_fixed(x, s, z0, lo, hi):
    return np.clip(np.rint(x / safe(s)) + z0, lo, hi)


def _codes_offset(x, s, m, hi):
    return np.clip(np.rint((x - m) / safe(s)), 0, hi)


def refit_fixed(x, imp, s, z0, lo, hi, sdt, err, iters):
    """Least-squares scale for the current codes, kept per block where the error falls."""
    for _ in range(iters):
        q = _codes_fixed(x, s, z0, lo, hi) - z0
        num = np.sum(imp * x * q, axis=-1, keepdims=True)
        den = np.sum(imp * q * q, axis=-1, keepdims=True)
        s_new = stored(np.where(den > 0, num / safe(den), s).astype(F32), sdt)
        q_new = _codes_fixed(x, s_new, z0, lo, hi)
        e_new = weighted_error(x, s_new * (q_new - z0), imp)
        better = e_new < err
        s, err = np.where(better, s_new, s), np.where(better, e_new, err)
    return s, err


def refit_int(x, imp, s, z, hi, sdt, err, iters):
    """Alternate the least-squares scale and the best integer zero for the current codes."""
    wsum = np.maximum(np.sum(np.broadcast_to(imp, x.shape), axis=-1, keepdims=True), F32(1e-30))
    for _ in range(iters):
        q = np.clip(np.rint(x / safe(s)) + z, 0, hi)
        qz = q - z
        num = np.sum(imp * x * qz, axis=-1, keepdims=True)
        den = np.sum(imp * qz * qz, axis=-1, keepdims=True)
        s_new = stored(np.where(den > 0, num / safe(den), s).astype(F32), sdt)
        z_new = np.clip(np.rint(np.sum(imp * (q - x / safe(s_new)), axis=-1, keepdims=True) / wsum), 0, hi)
        q_new = np.clip(np.rint(x / safe(s_new)) + z_new, 0, hi)
        e_new = weighted_error(x, s_new * (q_new - z_new), imp)
        better = (e_new < err) & (s_new > 0)
        s, z, err = np.where(better, s_new, s), np.where(better, z_new, z), np.where(better, e_new, err)
    return s, z, err


def refit_offset(x, imp, s, m, hi, sdt, err, iters):
    """Least-squares (scale, offset) for the current codes, kept per block where the error falls."""
    w = np.broadcast_to(imp, x.shape)
    sw = np.sum(w, axis=-1, keepdims=True)
    sx = np.sum(w * x, axis=-1, keepdims=True)
    for _ in range(iters):
        q = _codes_offset(x, s, m, hi)
        sq = np.sum(w * q, axis=-1, keepdims=True)
        sqq = np.sum(w * q * q, axis=-1, keepdims=True)
        sxq = np.sum(w * x * q, axis=-1, keepdims=True)
        det = sw * sqq - sq * sq
        ok = det > F32(1e-12) * np.maximum(sw * sqq, F32(1e-30))
        s_new = stored(np.where(ok, (sw * sxq - sq * sx) / safe(det), s).astype(F32), sdt)
        m_new = stored(np.where(ok, (sqq * sx - sq * sxq) / safe(det), m).astype(F32), sdt)
        q_new = _codes_offset(x, s_new, m_new, hi)
        e_new = weighted_error(x, s_new * q_new + m_new, imp)
        better = e_new < err
        s, m, err = np.where(better, s_new, s), np.where(better, m_new, m), np.where(better, e_new, err)
    return s, m, err


class Clip(Recipe):
    name = "clip"
    summary = "per group, the shrunk range with the least weighted squared error, then a least-squares refit"

    def __init__(self, min_shrink: float = 0.5, steps: int = 26, refit_iters: int = 2, weighting: str = "mag",
                 max_shrink: float = 1.0):
        self.min_shrink, self.steps, self.refit_iters = float(min_shrink), int(steps), int(refit_iters)
        self.max_shrink, self.weighting = float(max_shrink), weighting
        self.grid = np.linspace(self.max_shrink, self.min_shrink, self.steps).astype(F32)

    def describe(self) -> dict:
        return {"name": self.name, "grid": [self.max_shrink, self.min_shrink, self.steps], "refit_iters": self.refit_iters,
                "weighting": self.weighting}

    def values(self, w: np.ndarray, scheme: Scheme, context: RecipeContext) -> QuantValues:
        k = w.shape[1]
        x, imp = as_blocks(w, scheme, context.importance)
        imp = element_weights(x, imp, self.weighting)
        kind = scheme.zero_kind
        if kind == ZERO_FIXED:
            s, codes, zero = self._fixed(x, imp, scheme)
        elif kind == ZERO_INT:
            s, codes, zero = self._int(x, imp, scheme)
        else:
            s, codes, zero = self._offset(x, imp, scheme)
        return finish(scheme, codes, s, zero, k)

    def _fixed(self, x, imp, scheme):
        lo, hi = scheme.code_range()
        z0, sdt = F32(scheme.fixed_zero()), scheme.scale_dtype
        extreme = signed_extreme(x)
        best_s = np.zeros_like(extreme)
        best_e = np.full_like(extreme, np.inf)
        for end in (lo - z0, hi - z0):
            for a in self.grid:
                s = stored((extreme * a / F32(end)).astype(F32), sdt)
                e = weighted_error(x, s * (_codes_fixed(x, s, z0, lo, hi) - z0), imp)
                better = e < best_e
                best_s, best_e = np.where(better, s, best_s), np.where(better, e, best_e)
        s, _ = refit_fixed(x, imp, best_s, z0, lo, hi, sdt, best_e, self.refit_iters)
        return s, _codes_fixed(x, s, z0, lo, hi), None

    def _int(self, x, imp, scheme):
        _, hi = scheme.code_range()
        sdt = scheme.scale_dtype
        mn, mx = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
        centre, half = (mn + mx) / 2, (mx - mn) / 2
        best_s = np.ones_like(mn)
        best_z = np.zeros_like(mn)
        best_e = np.full_like(mn, np.inf)
        for a in self.grid:
            lo_v = np.minimum(centre - a * half, 0)
            hi_v = np.maximum(centre + a * half, 0)
            s = stored(((hi_v - lo_v) / F32(hi)).astype(F32), sdt)
            s = np.where(s > 0, s, F32(1))  # an all-zero group: any scale, zero codes
            z = np.clip(np.rint(-lo_v / s), 0, hi)
            e = weighted_error(x, s * (np.clip(np.rint(x / s) + z, 0, hi) - z), imp)
            better = e < best_e
            best_s, best_z, best_e = np.where(better, s, best_s), np.where(better, z, best_z), np.where(better, e, best_e)
        s, z, _ = refit_int(x, imp, best_s, best_z, hi, sdt, best_e, self.refit_iters)
        return s, np.clip(np.rint(x / s) + z, 0, hi), z

    def _offset(self, x, imp, scheme):
        _, hi = scheme.code_range()
        sdt = scheme.scale_dtype
        mn, mx = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
        centre, half = (mn + mx) / 2, (mx - mn) / 2
        best_s, best_m = np.zeros_like(mn), stored(mn, sdt)
        best_e = np.full_like(mn, np.inf)
        for a in self.grid:
            m = stored((centre - a * half).astype(F32), sdt)
            s = stored((2 * a * half / F32(hi)).astype(F32), sdt)
            e = weighted_error(x, s * _codes_offset(x, s, m, hi) + m, imp)
            better = e < best_e
            best_s, best_m, best_e = np.where(better, s, best_s), np.where(better, m, best_m), np.where(better, e, best_e)
        s, m, _ = refit_offset(x, imp, best_s, best_m, hi, sdt, best_e, self.refit_iters)
        return s, _codes_offset(x, s, m, hi), m
