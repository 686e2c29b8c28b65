"""``gptq``: GPTQ's error compensation (Frantar et al., 2022) in the tensor's own scheme.

GPTQ quantizes a weight W [n, K] one input column at a time and pushes each column's rounding
error onto the columns not yet quantized, weighted by the inverse of H = E[x xᵀ] (the XᵀX the
calibration pass collected for this matmul's input), so that the output error ‖(Ŵ - W) X‖ stays
small rather than the weight error. With U the upper Cholesky factor of H⁻¹ (H damped by
``damp`` x its mean diagonal), for column j:

    q_j = quantize(w_j)        with the scale / zero of j's group
    e   = (w_j - dequant(q_j)) / U[j, j]
    w_l <- w_l - e U[j, l]     for every later column l (in blocks of ``block``, lazily)

Each group's scale and zero are chosen when its first column is reached, from the current (already
compensated) weights of the group, by a *scale rule*: the vendor's round-to-nearest rule (``gptq``),
or ``clip`` / ``hqq`` weighted by diag(H) (``gptq+clip``). The codes are then the nearest ones
under that stored scale, so the kernel packs them in the scheme's own layout (Q4_0 blocks,
MatMulNBits groups, NNCF groups, MLX groups, per-channel int8). ``act_order`` processes columns
by decreasing diag(H) (the most important first) while keeping every group contiguous in the
original order, as the formats require (a group's scale is fixed when any of its columns comes
first). Cost: one K x K Cholesky per tensor and ~2 n K² multiply-adds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..scheme import GGML, ZERO_FIXED, ZERO_INT, Scheme
from ..values import QuantValues
from .base import Recipe, RecipeContext
from .blocks import F32, codes_dtype, stored
from .rtn import RTN

__all__ = ["GPTQ", "gptq_factor", "gptq_values"]


def gptq_factor(h: np.ndarray, damp: float = 0.01, act_order: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(column order, upper Cholesky factor U of H⁻¹ in that order, dead columns) for ``h`` = E[x xᵀ].

    Columns no token ever reached (zero diagonal) get a unit diagonal and zero weights, as GPTQ does;
    the damping grows tenfold (up to 4 times) until H is positive definite.

    U comes from one Cholesky and one triangular inverse, never from H⁻¹ itself: with J the
    reversal, J H J = M Mᵀ gives H = R Rᵀ for the upper R = J M J, so H⁻¹ = Uᵀ U with U = R⁻¹ =
    J M⁻¹ J, upper with a positive diagonal, hence H⁻¹'s Cholesky factor. Both steps run by blocks
    in place, so an 8192-wide FFN input (XᵀX 256 MiB in float32) needs about three K x K arrays at
    the peak instead of the ~10 that numpy's inv/cholesky/product chain held (2.5 GiB).
    """
    k = h.shape[0]
    dt = np.float64 if k <= 4096 else np.float32  # K x K float64 for an 8192-wide FFN would be 512 MB each
    diag = np.diagonal(h).astype(dt)
    dead = diag <= 0
    diag[dead] = 1
    order = np.argsort(-diag, kind="stable") if act_order else np.arange(k)
    rev = order[::-1]
    ii = np.arange(k)
    diag_rev = diag[rev]
    base = float(np.mean(diag))
    for attempt in range(5):
        hr = np.asarray(h, dtype=dt)[np.ix_(rev, rev)]  # J H J in processing order: one K x K copy
        hr[ii, ii] = diag_rev + damp * base * 10**attempt  # damped in place
        try:
            m = _cholesky_in_place(hr)
        except np.linalg.LinAlgError:
            continue
        u = _lower_inverse(m)[::-1, ::-1]
        del m, hr
        return order, np.ascontiguousarray(u, dtype=F32), dead
    raise np.linalg.LinAlgError("GPTQ: XᵀX stays singular after damping 10^4 x; the calibration statistics are degenerate")


def _cholesky_in_place(a: np.ndarray, block: int = 512) -> np.ndarray:
    """Lower Cholesky factor of the symmetric positive-definite ``a``, written over ``a`` (its upper
    triangle zeroed) by blocks, left-looking: ``np.linalg.cholesky`` of an 8192 x 8192 float32
    matrix holds ~1.5 GiB of buffers; this holds ``a`` and one block row of temporaries.
    Raises ``np.linalg.LinAlgError`` where ``a`` is not positive definite."""
    k = a.shape[0]
    for j0 in range(0, k, block):
        j1 = min(j0 + block, k)
        diag = a[j0:j1, j0:j1]
        if j0:
            diag -= a[j0:j1, :j0] @ a[j0:j1, :j0].T
        low = np.linalg.cholesky(diag)
        a[j0:j1, j0:j1] = low
        a[j0:j1, j1:] = 0
        if j1 < k:
            low_inv_t = np.linalg.inv(low).T
            for i0 in range(j1, k, block):
                i1 = min(i0 + block, k)
                panel = a[i0:i1, j0:j1]
                if j0:
                    panel -= a[i0:i1, :j0] @ a[j0:j1, :j0].T
                a[i0:i1, j0:j1] = panel @ low_inv_t
    return a


def _lower_inverse(m: np.ndarray, block: int = 512) -> np.ndarray:
    """Inverse of the lower-triangular ``m`` by block forward substitution: the result and one block
    row of temporaries, where ``np.linalg.inv`` would hold three more K x K buffers."""
    k = m.shape[0]
    x = np.zeros_like(m)
    for i0 in range(0, k, block):
        i1 = min(i0 + block, k)
        d = np.linalg.inv(m[i0:i1, i0:i1])
        x[i0:i1, i0:i1] = d
        if i0:
            x[i0:i1, :i0] = -(d @ (m[i0:i1, :i0] @ x[:i0, :i0]))
    return x


def _params(rule: Recipe, w: np.ndarray, scheme: Scheme, imp: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The stored (scale, zero) of one group's current rows ``w`` [n, g] under ``rule``."""
    g_scheme = scheme if scheme.layout == GGML else dataclasses.replace(scheme, group=w.shape[1])
    vals = rule.values(np.ascontiguousarray(w, F32), g_scheme, RecipeContext(importance=imp))
    s = stored(vals.scales[:, 0].astype(F32), scheme.scale_dtype)
    if vals.zeros is None:
        return s, None
    z = vals.zeros[:, 0]
    return s, (z.astype(F32) if scheme.zero_kind == ZERO_INT else stored(z.astype(F32), scheme.scale_dtype))


def _code(x: np.ndarray, s: np.ndarray, z: np.ndarray | None, scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    """Nearest codes of column ``x`` [n] under stored (s, z), and what they dequantize to."""
    lo, hi = scheme.code_range()
    kind = scheme.zero_kind
    ok = s != 0
    safe = np.where(ok, s, F32(1))
    if kind == ZERO_FIXED:
        z0 = F32(scheme.fixed_zero())
        q = np.where(ok, np.clip(np.rint(x / safe) + z0, lo, hi), z0)
        return q, (q - z0) * s
    if kind == ZERO_INT:
        q = np.where(ok, np.clip(np.rint(x / safe) + z, lo, hi), z)
        return q, (q - z) * s
    q = np.where(ok, np.clip(np.rint((x - z) / safe), lo, hi), 0)
    return q, q * s + z


def gptq_values(w: np.ndarray, scheme: Scheme, factor: tuple[np.ndarray, np.ndarray, np.ndarray], rule: Recipe,
                imp: np.ndarray | None = None, block: int = 128) -> QuantValues:
    """GPTQ's values of rows ``w`` [n, K] under ``scheme`` (see the module docstring).

    Works on the transposed weight (one contiguous row per input column) in processing order.
    """
    order, u, dead = factor
    n, k = w.shape
    g, groups = scheme.group_of(k), scheme.groups(k)
    imp = np.ones(k, F32) if imp is None else np.asarray(imp, F32)
    inv = np.empty_like(order)
    inv[order] = np.arange(k)
    wt = np.array(np.asarray(w, F32).T[order], dtype=F32, order="C")  # [K, n], processing order
    wt[dead[order]] = 0
    group_of = order // g
    scales = np.zeros((groups, n), F32)
    zeros = None if scheme.zero_kind == ZERO_FIXED else np.zeros((groups, n), F32)
    chosen = np.zeros(groups, bool)
    codes = np.empty((k, n), F32)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        err = np.empty((i2 - i1, n), F32)
        for j in range(i1, i2):
            gi = group_of[j]
            if not chosen[gi]:
                cols = np.arange(gi * g, min((gi + 1) * g, k))
                s, z = _params(rule, wt[inv[cols]].T, scheme, imp[cols])
                scales[gi] = s
                if zeros is not None:
                    zeros[gi] = z
                chosen[gi] = True
            x = wt[j]
            q, d = _code(x, scales[gi], None if zeros is None else zeros[gi], scheme)
            codes[j] = q
            e = (x - d) / u[j, j]
            if j + 1 < i2:
                wt[j + 1 : i2] -= np.outer(u[j, j + 1 : i2], e)
            err[j - i1] = e
        if i2 < k:
            wt[i2:] -= u[i1:i2, i2:].T @ err
    codes = np.ascontiguousarray(codes[inv].T).astype(codes_dtype(scheme))
    scales = np.ascontiguousarray(scales.T)
    if zeros is not None:
        zeros = np.ascontiguousarray(zeros.T)
        if scheme.zero_kind == ZERO_INT:
            zeros = zeros.astype(np.uint8)
    return QuantValues(codes, scales, zeros)


class GPTQ(Recipe):
    """GPTQ with a scale rule (round to nearest by default); falls back to the rule alone for a
    tensor without XᵀX (an untied embedding)."""

    name = "gptq"
    summary = "GPTQ error compensation from the calibration XᵀX, in each tensor's own scheme"
    needs_calibration = True
    uses_importance = True
    awq = False
    #: Rows worked on at once: GPTQ's column loop costs Python time per call, not per row.
    chunk_elements = 1 << 24

    def __init__(self, rule: Recipe | None = None, act_order: bool = True, damp: float = 0.01, block: int = 128):
        self.rule = rule or RTN()
        self.act_order, self.damp, self.block = bool(act_order), float(damp), int(block)
        if self.rule.name != "rtn":
            self.name = f"gptq+{self.rule.name}"

    def describe(self) -> dict:
        return {"name": self.name, "rule": self.rule.describe(), "act_order": self.act_order, "damp": self.damp,
                "block": self.block}

    def refusal(self, scheme: Scheme) -> str | None:
        return self.rule.refusal(scheme)

    def values(self, w: np.ndarray, scheme: Scheme, context: RecipeContext) -> QuantValues:
        stats = context.stats.get("calibration")
        if stats is None or not stats.has_xtx or stats.count == 0:
            return self.rule.values(w, scheme, context)
        factor = stats.memo(("gptq", self.damp, self.act_order),
                            lambda: gptq_factor(stats.xtx(), self.damp, self.act_order))
        return gptq_values(w, scheme, factor, self.rule, context.importance, self.block)
