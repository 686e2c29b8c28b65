"""The streaming calibration pass: the oracle run layer by layer over the calibration tokens.

For each decoder layer, in order: read that layer's tensors (float32, from the memory-mapped
checkpoint), run the architecture's own layer forward (:meth:`Architecture.calibration_layer`) on
every calibration sequence, accumulate the statistics of each matmul's input, write them to the
statistics file and drop the layer before reading the next. What stays in memory is the residual
stream of the calibration tokens (tokens x hidden float32), one layer's float32 weights, one
sequence's activations and the layer's accumulators (a K x K XᵀX per matmul input). For the
1.1 GB generated checkpoint (hidden 2048, FFN 8192) that is 16 MB + 268 MB + ~100 MB + 304 MB;
``docs/performance.md`` has the measured peak.

The embedding is never read whole: only the rows of the calibration tokens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..arch.oracle import rope_tables
from ..arch.roles import TensorRole
from ..errors import BadInputError
from ..types import NullProgress, Progress
from .stats import Accumulator, Point, StatsWriter, model_points

__all__ = ["collect_statistics"]


def _embed_rows(source: Any, ids: list[int]) -> np.ndarray:
    """float32 rows of the embedding for ``ids`` (only those rows are read)."""
    t = source.tensor(TensorRole.EMBED)
    raw = t.raw()
    rows = np.asarray(raw[np.asarray(ids, np.int64)])
    if t.dtype == "bf16":
        return (rows.astype(np.uint32) << 16).view(np.float32)
    return rows.astype(np.float32)


class _Layer:
    """One layer's float32 tensors, read on first use and dropped with the object."""

    def __init__(self, source: Any, layer: int | None):
        self.source, self.layer = source, layer
        self._w: dict[tuple[TensorRole, int | None], np.ndarray] = {}
        self.nbytes = 0

    def __call__(self, role: TensorRole, expert: int | None = None) -> np.ndarray:
        key = (TensorRole(role), expert)
        if key not in self._w:
            t = self.source.tensor(key[0], self.layer, expert) if expert is not None else self.source.tensor(key[0], self.layer)
            self._w[key] = np.ascontiguousarray(t.to_float32())
            self.nbytes += t.nbytes
        return self._w[key]


def collect_statistics(source: Any, sequences: list[list[int]], path: Path, meta: dict[str, Any],
                       progress: Progress | None = None, with_xtx: bool = True) -> float:
    """Run the calibration pass over ``sequences`` and write every point's statistics to ``path``.

    Returns the seconds it took. The file is complete only when this returns; on any error it is removed.
    """
    progress = progress or NullProgress()
    config = source.config
    arch = config.arch
    points = model_points(config)
    declared = {p for p, _ in points}
    widths = dict(points)
    t0 = time.perf_counter()
    writer = StatsWriter(path, points, meta, with_xtx)
    try:
        xs = [_embed_rows(source, ids) for ids in sequences]
        tables = {}
        for ids in sequences:
            if len(ids) not in tables:
                tables[len(ids)] = rope_tables(config, len(ids))
        total = sum(i.nbytes for i in source.tensor_infos())
        progress.start(total, f"calibrate {sum(len(s) for s in sequences)} tokens")
        for n in range(config.num_layers):
            weights = _Layer(source, n)
            accs: dict[Point, Accumulator] = {}
            observe = _observer(n, accs, declared, widths, with_xtx)
            for i, ids in enumerate(sequences):
                cos, sin = tables[len(ids)]
                xs[i] = arch.calibration_layer(config, n, weights, xs[i], cos, sin, observe)
            for p, _ in points:
                if p.layer == n:
                    writer.write(p, accs.get(p) or Accumulator(widths[p], with_xtx))
            progress.advance(weights.nbytes, f"layer {n}")
            del weights, accs
        final = _Layer(source, None)
        accs = {}
        observe = _observer(None, accs, declared, widths, with_xtx)
        for x in xs:
            arch.calibration_final(config, final, x, observe)
        for p, _ in points:
            if p.layer is None:
                writer.write(p, accs.get(p) or Accumulator(widths[p], with_xtx))
        progress.advance(final.nbytes, "final norm")
        writer.close()
    except BaseException:
        writer.abort()
        Path(path).unlink(missing_ok=True)
        raise
    finally:
        progress.finish()
    return time.perf_counter() - t0


def _observer(layer: int | None, accs: dict[Point, Accumulator], declared: set[Point], widths: dict[Point, int],
              with_xtx: bool) -> Callable[..., None]:
    def observe(role: TensorRole | str, x: np.ndarray, expert: int | None = None) -> None:
        p = Point(layer, TensorRole(role).value, expert)
        if p not in declared:
            raise RuntimeError(f"calibration observed {p}, which the architecture's stream plan has no matmul for")
        acc = accs.get(p)
        if acc is None:
            acc = accs[p] = Accumulator(widths[p], with_xtx)
        acc.add(x)

    return observe
