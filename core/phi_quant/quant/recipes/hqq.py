"""``hqq``: Half-Quadratic Quantization's zero-point optimisation, for formats with zero points.

HQQ (Badri & Shaji, 2023) keeps the round-to-nearest scale of each group and optimises its zero
z to minimise an lp norm (p < 1) of the reconstruction error, which tolerates a few large errors
(outliers) in exchange for a better fit of the bulk. Half-quadratic splitting alternates

    e  <- shrink_p(x - s (q - z), beta)      # the sparse error: sign(r) max(|r| - |r|^(p-1)/beta, 0)
    z  <- mean_w(q - (x - e) / s)            # closed form for the zero (weights w: importance)
    q  <- clamp(round(x / s + z))
    beta <- kappa * beta

for ``iters`` rounds, keeping per group the zero with the least weighted squared error seen.
Defaults are HQQ's (p = 0.7, beta = 10, kappa = 1.01, 20 rounds). The zero is then rounded to
what the format stores: an integer code (asymmetric MatMulNBits, NNCF u4/u8 zero points) or a
float offset m = -s z (ggml Q4_1, mlx biases) in the stored dtype; a least-squares refit of the
scale (and offset) to the final codes follows (as in ``clip``). Symmetric schemes have no zero to
optimise: the recipe refuses them. Cost: ``iters`` quantize-dequantize passes.
"""

from __future__ import annotations

import numpy as np

from ..scheme import ZERO_FIXED, ZERO_INT, Scheme
from ..values import QuantValues
from .base import Recipe, RecipeContext
from .blocks import F32, as_blocks, element_weights, finish, safe, stored, weighted_error
from .clip import refit_int, refit_offset

__all__ = ["HQQ"]


def _shrink(r: np.ndarray, beta: float, p: float) -> np.ndarray:
    a = np.abs(r)
    return np.sign(r) * np.maximum(a - np.power(a + F32(1e-8), F32(p - 1)) / F32(beta), 0)


class HQQ(Recipe):
    name = "hqq"
    summary = "HQQ's half-quadratic zero-point optimisation (lp error, p=0.7), rounded to the stored zero"

    def __init__(self, p: float = 0.7, beta: float = 10.0, kappa: float = 1.01, iters: int = 20, refit_iters: int = 2,
                 weighting: str = "none"):
        self.p, self.beta, self.kappa, self.iters, self.refit_iters = float(p), float(beta), float(kappa), int(iters), int(refit_iters)
        self.weighting = weighting

    def describe(self) -> dict:
        return {"name": self.name, "p": self.p, "beta": self.beta, "kappa": self.kappa, "iters": self.iters,
                "refit_iters": self.refit_iters, "weighting": self.weighting}

    def refusal(self, scheme: Scheme) -> str | None:
        reason = super().refusal(scheme)
        if reason is None and scheme.zero_kind == ZERO_FIXED:
            reason = (f"{scheme.name} is symmetric: it stores no zero point for hqq to optimise "
                      "(ask for the asymmetric scheme, or use --recipe clip)")
        return reason

    def values(self, w: np.ndarray, scheme: Scheme, context: RecipeContext) -> QuantValues:
        k = w.shape[1]
        x, imp = as_blocks(w, scheme, context.importance)
        imp = element_weights(x, imp, self.weighting)
        _, hi = scheme.code_range()
        sdt = scheme.scale_dtype
        mn, mx = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
        s = stored(((mx - mn) / F32(hi)).astype(F32), sdt)
        s = np.where(s > 0, s, F32(1))
        z = -mn / s
        wsum = np.maximum(np.sum(np.broadcast_to(imp, x.shape), axis=-1, keepdims=True), F32(1e-30))
        q = np.clip(np.rint(x / s + z), 0, hi)
        best_z, best_e = z, weighted_error(x, s * (q - z), imp)
        beta = self.beta
        for _ in range(self.iters):
            e = _shrink(x - s * (q - z), beta, self.p)
            z = (np.sum(imp * (q - (x - e) / s), axis=-1, keepdims=True) / wsum).astype(F32)
            beta *= self.kappa
            q = np.clip(np.rint(x / s + z), 0, hi)
            err = weighted_error(x, s * (q - z), imp)
            better = err < best_e
            best_z, best_e = np.where(better, z, best_z), np.where(better, err, best_e)
        if scheme.zero_kind == ZERO_INT:
            z = np.clip(np.rint(best_z), 0, hi)
            q = np.clip(np.rint(x / s) + z, 0, hi)
            s, z, _ = refit_int(x, imp, s, z, hi, sdt, weighted_error(x, s * (q - z), imp), self.refit_iters)
            return finish(scheme, np.clip(np.rint(x / s) + z, 0, hi), s, z, k)
        m = stored((-s * best_z).astype(F32), sdt)
        q = np.clip(np.rint((x - m) / safe(s)), 0, hi)
        s, m, _ = refit_offset(x, imp, s, m, hi, sdt, weighted_error(x, s * q + m, imp), self.refit_iters)
        return finish(scheme, np.clip(np.rint((x - m) / safe(s)), 0, hi), s, m, k)
