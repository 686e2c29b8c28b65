"""Activation-aware weight scaling (AWQ, Lin et al., 2023), searched per fold and folded exactly.

For each :class:`~phi_quant.arch.base.ScaleFold` of a layer (phi3: attention norm -> qkv columns,
v rows -> o columns with one scale per kv-head channel, MLP norm -> gate_up columns, up rows ->
down columns) AWQ looks for a per-channel scale s that makes the consumer's weight easier to
quantize: columns that meet large activations are scaled up before quantization (their relative
rounding error shrinks) and the inverse scale goes into the tensor before, so the float model is
unchanged. The candidates are AWQ's (with AutoAWQ's default "duo" scaling)

    s(α) = mean|x|^α / mean_w^(1-α),   normalised so that max(s) min(s) = 1,   α = 0, 1/n, ..., (n-1)/n

plus s = 1, where mean|x| is the consumer input's mean magnitude per channel (averaged over the
query heads of a kv group for v -> o) and mean_w the mean over rows of |w| / (its group's max |w|).
Each candidate is scored by the consumer's output error over the calibration tokens, computed
from the statistics as tr(ΔW E[x xᵀ] ΔWᵀ) with ΔW = Q(W diag(s)) diag(1/s) - W, and Q the
round-to-nearest of the scheme the backend's plan gives that tensor (ggml K-quants, which only
ggml writes, are searched with an affine grid of the same bits and sub-block). E[x xᵀ] enters as
its top 128 eigen-directions plus the rest of its diagonal (:func:`error_sketch`), and rows beyond
a budget are subsampled evenly, so a score costs about 2^27 multiply-adds however wide the layer.
s = 1 is a candidate, so the search never scores worse than plain rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..arch.base import ScaleFold
from ..arch.roles import TensorRole
from ..quant.recipes.blocks import stored
from ..quant.scheme import NATIVE, Scheme
from ..quant.values import dequantize, quantize

__all__ = ["AWQ_GRID", "LayerScales", "fake_quant", "search_fold", "search_layer"]

#: Grid points of α (AutoAWQ's n_grid).
AWQ_GRID = 20
#: Multiply-adds one candidate's score may cost (rows x K x 129); more rows are subsampled evenly.
SCORE_BUDGET = 1 << 27
F32 = np.float32


@dataclass
class LayerScales:
    """The scales chosen for one layer: per fold its vector s, plus what each tensor gets from them."""

    layer: int
    folds: list[tuple[ScaleFold, np.ndarray]] = field(default_factory=list)
    report: list[dict[str, Any]] = field(default_factory=list)

    def row_scale(self, role: TensorRole, rows: int) -> np.ndarray | None:
        """Factor per row of a matrix (1/s on a fold's source rows), or None."""
        out = None
        for f, s in self.folds:
            if f.source == role and f.rows is not None:
                out = np.ones(rows, F32) if out is None else out
                out[f.rows[0] : f.rows[1]] /= s
        return out

    def column_scale(self, role: TensorRole, expert: int | None, k: int) -> np.ndarray | None:
        """Factor per input column of a consumer matmul (s[index]), or None."""
        out = None
        for f, s in self.folds:
            if (role, expert) in f.consumers:
                out = np.ones(k, F32) if out is None else out
                out *= f.consumer_scale(s)
        return out

    def norm_scale(self, role: TensorRole) -> np.ndarray | None:
        """Divisor of a norm's gains (the s of the fold it is the source of), or None."""
        for f, s in self.folds:
            if f.source == role and f.rows is None:
                return s
        return None


def _affine_roundtrip(w: np.ndarray, bits: int, group: int) -> np.ndarray:
    """min/max affine rounding of ``w`` [n, K] in groups of ``group`` (fp16 scale and offset)."""
    n, k = w.shape
    pad = -k % group
    x = np.pad(w, ((0, 0), (0, pad)), mode="edge").reshape(n, -1, group)
    mn, mx = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    s = stored(np.maximum((mx - mn) / F32((1 << bits) - 1), F32(1e-8)).astype(F32), "f16")
    m = stored(mn, "f16")
    q = np.clip(np.rint((x - m) / s), 0, (1 << bits) - 1)
    return (q * s + m).reshape(n, -1)[:, :k].astype(F32)


def fake_quant(w: np.ndarray, scheme: Scheme) -> np.ndarray:
    """``w`` [n, K] rounded to nearest in ``scheme`` and dequantized (float32), as the runtime sees it.

    A type only the vendor writes (ggml K-quants) is approximated by an affine grid of its bits on
    its 32-element sub-blocks (16 for Q6_K).
    """
    if scheme.layout == NATIVE:
        return _affine_roundtrip(w, min(max(scheme.bits, 2), 8), 16 if scheme.name.startswith("Q6") else 32)
    w = np.ascontiguousarray(w, F32)
    return dequantize(quantize(w, "f32", scheme, threads=1), scheme, w.shape)  # the kernel's fused RTN


def _rows_for_score(n: int, k: int) -> np.ndarray:
    keep = max(1, min(n, SCORE_BUDGET // max(k * 129, 1)))
    return np.unique(np.linspace(0, n - 1, keep).round().astype(np.int64))


def _weight_mean(w: np.ndarray, scheme: Scheme) -> np.ndarray:
    """AutoAWQ's mean_w: mean over rows of |w| / max |w| of its quantization group, per column."""
    g = scheme.group_of(w.shape[1]) if scheme.layout != NATIVE else 32
    n, k = w.shape
    a = np.abs(w)
    if k % g == 0:
        blocks = a.reshape(n, k // g, g)
        a = (blocks / (blocks.max(axis=-1, keepdims=True) + F32(1e-6))).reshape(n, k)
    else:
        a = a / (a.max(axis=1, keepdims=True) + F32(1e-6))
    return a.mean(axis=0)


def error_sketch(h: np.ndarray, rank: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(B [K, r], d [K]) with E[x xᵀ] ≈ B Bᵀ + diag(d): its top-``rank`` eigenpairs (exact for K ≤ 1024,
    else a seeded randomized range finder with one power step) and the rest of its diagonal.

    Scoring a candidate then costs n K r instead of n K² multiply-adds; activation covariances are
    dominated by a few directions, and the diagonal keeps every channel's own weight exact.
    """
    h = np.asarray(h, np.float64)
    k = h.shape[0]
    if k <= rank:
        lam, vec = np.linalg.eigh(h)
    elif k <= 1024:
        lam, vec = np.linalg.eigh(h)
        lam, vec = lam[-rank:], vec[:, -rank:]
    else:
        omega = np.random.default_rng(seed).standard_normal((k, rank + 16))
        q, _ = np.linalg.qr(h @ (h @ omega))
        lam, u = np.linalg.eigh(q.T @ h @ q)
        lam, vec = lam[-rank:], q @ u[:, -rank:]
    lam = np.maximum(lam, 0)
    b = vec * np.sqrt(lam)[None, :]
    d = np.maximum(np.diagonal(h) - np.einsum("ij,ij->i", b, b), 0)
    return b.astype(F32), d.astype(F32)


@dataclass
class Consumer:
    """One consumer matmul of a fold: its weight as it will be quantized (row scales applied), its
    scheme, its input statistics (E[x xᵀ] as :func:`error_sketch`'s factors, mean |x|) and its row factors."""

    weight: np.ndarray  # [n, K] float32, rows already multiplied by ``rows``
    scheme: Scheme
    xtx: np.ndarray
    mean_abs: np.ndarray
    rows: np.ndarray | None = None  # per-row factor already applied to ``weight``

    def __post_init__(self) -> None:
        self.sketch = error_sketch(self.xtx)


def _score(c: Consumer, col: np.ndarray, pick: np.ndarray) -> float:
    """tr(ΔW E[x xᵀ] ΔWᵀ) over the picked rows, in the consumer's original output units."""
    w = c.weight[pick]
    q = fake_quant(w * col[None, :], c.scheme) / col[None, :]
    delta = q - w
    if c.rows is not None:
        delta /= c.rows[pick][:, None]  # back to the original output units
    b, d = c.sketch
    proj = delta @ b
    return float(np.vdot(proj, proj)) + float(np.vdot(delta * delta, np.broadcast_to(d, delta.shape)))


def search_fold(fold: ScaleFold, consumers: list[Consumer], grid: int = AWQ_GRID, duo: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """The scale s (float32 [fold.size]) with the least consumer output error, and a report line."""
    size = fold.size

    def pool(per_column: np.ndarray) -> np.ndarray:
        if fold.index is None:
            return per_column
        sums = np.bincount(fold.index, weights=per_column, minlength=size)
        counts = np.bincount(fold.index, minlength=size)
        return (sums / np.maximum(counts, 1)).astype(F32)

    x_mean = np.mean([pool(c.mean_abs) for c in consumers], axis=0).astype(F32)
    w_mean = np.mean([pool(_weight_mean(c.weight, c.scheme)) for c in consumers], axis=0).astype(F32)
    picks = [_rows_for_score(*c.weight.shape) for c in consumers]

    def total(s: np.ndarray) -> float:
        return sum(_score(c, fold.consumer_scale(s), p) for c, p in zip(consumers, picks))

    ones = np.ones(size, F32)
    best_s, best = ones, total(ones)
    base, best_alpha = best, None
    for i in range(grid):
        alpha = i / grid
        s = np.power(np.maximum(x_mean, F32(1e-8)), F32(alpha))
        if duo:
            s = s / (np.power(np.maximum(w_mean, F32(1e-8)), F32(1 - alpha)) + F32(1e-4))
        s = np.maximum(s, F32(1e-4)).astype(F32)
        s = (s / np.sqrt(s.max() * s.min())).astype(F32)
        if not np.all(np.isfinite(s)):
            continue
        e = total(s)
        if e < best:
            best, best_s, best_alpha = e, s, alpha
    report = {"fold": fold.name, "layer": fold.layer, "alpha": best_alpha, "error_rtn": base, "error_awq": best,
              "ratio": (best / base) if base > 0 else 1.0}
    return best_s, report


def search_layer(folds: list[ScaleFold], weight: Callable[[TensorRole, int | None], np.ndarray],
                 scheme: Callable[[TensorRole, int | None], Scheme | None],
                 stats: Callable[[TensorRole, int | None], Any], grid: int = AWQ_GRID) -> LayerScales:
    """Every fold of one layer searched, folds whose consumers' rows other folds scale last (so each
    search sees the weights exactly as they will be quantized). A fold is skipped (s = 1) when a
    consumer is kept in float or has no statistics."""
    scales = LayerScales(folds[0].layer if folds else -1)
    pending = list(folds)
    while pending:
        ready = [f for f in pending if not any(o.source in {r for r, _ in f.consumers} and o.rows is not None
                                               for o in pending if o is not f)]
        if not ready:
            ready = pending[:1]
        for f in ready:
            pending.remove(f)
            consumers = []
            for role, expert in f.consumers:
                sch, st = scheme(role, expert), stats(role, expert)
                if sch is None or sch.is_float or st is None or not st.has_xtx or st.count == 0:
                    consumers = []
                    break
                w = weight(role, expert)
                rows = scales.row_scale(role, w.shape[0])
                consumers.append(Consumer(w if rows is None else w * rows[:, None], sch, st.xtx(), st.mean_abs, rows))
            if not consumers:
                scales.report.append({"fold": f.name, "layer": f.layer, "skipped": "consumer kept in float or no statistics"})
                continue
            s, rep = search_fold(f, consumers, grid)
            scales.folds.append((f, s))
            scales.report.append(rep)
    return scales
