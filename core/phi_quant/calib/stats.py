"""Calibration statistics: what the recipes need to know about the input of every matmul, and their file.

A *point* is the input of one matmul: (layer, role, expert), named by the role of the weight that
multiplies it (QKV, O, GATE_UP, DOWN per layer; LM_HEAD for the final norm's output, which a tied
embedding multiplies too). Over all calibration tokens x [N, K] each point keeps

- ``count`` N, ``mean_abs`` = mean |x| and ``mean_sq`` = mean x² per channel (AWQ's activation
  scale, the importance weights of clip/hqq and llama.cpp's imatrix), ``amax`` = max |x|;
- ``xtx`` = XᵀX / N, [K, K] (GPTQ's Hessian, AWQ's output-error metric).

The statistics live in one safetensors file written layer by layer as calibration proceeds
(``--calibration-cache`` keeps it; otherwise it is a temporary file), and are read back memory-mapped,
one point at a time, so no step holds more than one layer's statistics. Its ``__metadata__`` holds
the cache key and the provenance (model fingerprint, calibration text, token count).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..arch.roles import TensorRole
from ..errors import BadInputError
from ..model.safetensors_io import SafetensorsWriter, map_bytes, read_header

__all__ = ["STATS_VERSION", "Point", "Accumulator", "PointStats", "CalibrationStats", "StatsWriter", "point_of",
           "input_role", "model_points"]

#: Bump when the statistics or their file change meaning: old caches are then refused as stale.
STATS_VERSION = "1"
_META_KEY = "phi_quant.calibration"
_FUSED_INPUT = {TensorRole.Q: TensorRole.QKV, TensorRole.K: TensorRole.QKV, TensorRole.V: TensorRole.QKV,
                TensorRole.GATE: TensorRole.GATE_UP, TensorRole.UP: TensorRole.GATE_UP}


@dataclass(frozen=True, order=True)
class Point:
    """The input of one matmul: its layer (None: after the last layer), role and expert."""

    layer: int | None
    role: str
    expert: int | None = None

    @property
    def key(self) -> str:
        base = "final" if self.layer is None else f"layers.{self.layer}"
        return f"{base}.{self.role}" + ("" if self.expert is None else f".experts.{self.expert}")

    def __str__(self) -> str:
        return self.key


def input_role(role: TensorRole | str) -> TensorRole:
    """The role whose input a matmul reads: split roles (q, k, v; gate, up) read their fused tensor's."""
    role = TensorRole(role)
    return _FUSED_INPUT.get(role, role)


def point_of(role: TensorRole | str, layer: int | None, expert: int | None = None, tied: bool = False) -> Point | None:
    """The point whose statistics describe the input of a matmul tensor (None: an untied
    embedding, a norm). Split roles share their fused tensor's input; a tied embedding is the output
    projection too."""
    role = input_role(role)
    if role == TensorRole.EMBED:
        return Point(None, TensorRole.LM_HEAD.value) if tied else None
    if role == TensorRole.LM_HEAD:
        return Point(None, role.value)
    if not role.is_matmul:
        return None
    return Point(layer, role.value, expert)


def model_points(config: Any) -> list[tuple[Point, int]]:
    """Every point of a model and its input width K, in the order calibration produces them
    (layer by layer, then the final norm), derived from the architecture's stream plan."""
    tied = bool(config.tie_word_embeddings)
    seen: dict[Point, int] = {}
    for spec in config.arch.stream_plan(config):
        p = point_of(spec.role, spec.layer, spec.expert, tied)
        if p is not None and p not in seen:
            seen[p] = spec.shape[-1]
    final = [(p, k) for p, k in seen.items() if p.layer is None]
    layers = sorted(((p, k) for p, k in seen.items() if p.layer is not None),
                    key=lambda e: (e[0].layer, list(seen).index(e[0])))
    return layers + final


class Accumulator:
    """Running sums of one point over the calibration tokens (float64 vectors, float32 XᵀX)."""

    def __init__(self, k: int, with_xtx: bool = True):
        self.k = k
        self.count = 0
        self.abs_sum = np.zeros(k, np.float64)
        self.sq_sum = np.zeros(k, np.float64)
        self.amax = np.zeros(k, np.float32)
        self.xtx = np.zeros((k, k), np.float32) if with_xtx else None

    def add(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, np.float32).reshape(-1, self.k)
        if not len(x):
            return
        self.count += len(x)
        self.abs_sum += np.abs(x).sum(axis=0, dtype=np.float64)
        self.sq_sum += np.einsum("ij,ij->j", x, x, dtype=np.float64)
        np.maximum(self.amax, np.abs(x).max(axis=0), out=self.amax)
        if self.xtx is not None:
            self.xtx += x.T @ x

    def arrays(self) -> dict[str, np.ndarray]:
        """What the file stores: means over the tokens (zeros when no token reached the point)."""
        n = max(self.count, 1)
        out = {"count": np.asarray([self.count], np.float32), "mean_abs": (self.abs_sum / n).astype(np.float32),
               "mean_sq": (self.sq_sum / n).astype(np.float32), "amax": self.amax}
        if self.xtx is not None:
            out["xtx"] = self.xtx / np.float32(n)
        return out


_FIELDS = ("count", "mean_abs", "mean_sq", "amax", "xtx")


def _shape(field: str, k: int) -> tuple[int, ...]:
    return {"count": (1,), "xtx": (k, k)}.get(field, (k,))


class PointStats:
    """One point's statistics, seen through a per-channel input scale (after AWQ, x becomes x / s).

    Arrays are float32; ``xtx`` is read (memory-mapped) only when asked for.
    """

    def __init__(self, point: Point, count: int, mean_abs: np.ndarray, mean_sq: np.ndarray, amax: np.ndarray,
                 xtx_loader: Any = None, scale: np.ndarray | None = None):
        self.point = point
        self.count = int(count)
        self._mean_abs, self._mean_sq, self._amax = mean_abs, mean_sq, amax
        self._xtx_loader = xtx_loader
        self.scale = None if scale is None else np.asarray(scale, np.float32)
        self._memo: dict[Any, Any] = {}

    @property
    def k(self) -> int:
        return int(self._mean_sq.shape[0])

    def _div(self, a: np.ndarray, power: int) -> np.ndarray:
        a = np.asarray(a, np.float32)
        return a if self.scale is None else (a / self.scale**power).astype(np.float32)

    @property
    def mean_abs(self) -> np.ndarray:
        return self._div(self._mean_abs, 1)

    @property
    def mean_sq(self) -> np.ndarray:
        return self._div(self._mean_sq, 2)

    @property
    def amax(self) -> np.ndarray:
        return self._div(self._amax, 1)

    @property
    def has_xtx(self) -> bool:
        return self._xtx_loader is not None

    def xtx(self) -> np.ndarray:
        """E[x xᵀ] float32 [K, K] (a fresh array the caller may modify)."""
        if self._xtx_loader is None:
            raise BadInputError(f"the calibration statistics of {self.point} hold no XᵀX (needed by GPTQ and AWQ)")
        h = np.array(self._xtx_loader(), dtype=np.float32)
        if self.scale is not None:
            inv = (1.0 / self.scale).astype(np.float32)
            h *= inv[:, None]
            h *= inv[None, :]
        return h

    def scaled(self, s: np.ndarray) -> "PointStats":
        """The statistics of x / s (an input scale folded into the weight's columns)."""
        s = np.asarray(s, np.float32)
        total = s if self.scale is None else self.scale * s
        return PointStats(self.point, self.count, self._mean_abs, self._mean_sq, self._amax, self._xtx_loader, total)

    def memo(self, key: Any, make: Any) -> Any:
        """``make()`` once per key for these statistics (a GPTQ factorization shared by row chunks)."""
        if key not in self._memo:
            self._memo.clear()  # one factorization at a time: they are K x K
            self._memo[key] = make()
        return self._memo[key]


class CalibrationStats:
    """A statistics file opened for reading: ``meta`` (key, provenance) and one :class:`PointStats` per point."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        header = read_header(self.path)
        self._entries = header.entries
        raw = header.metadata.get(_META_KEY)
        if raw is None:
            raise BadInputError(f"{self.path} is not a phi-quant calibration statistics file (no {_META_KEY} metadata)")
        self.meta: dict[str, Any] = json.loads(raw)
        self.points: list[Point] = [Point(p[0], p[1], p[2]) for p in self.meta.get("points", [])]

    @property
    def key(self) -> str:
        return str(self.meta.get("key", ""))

    def _array(self, name: str) -> np.ndarray:
        e = self._entries[name]
        return map_bytes(e.path, e.offset, e.dtype, e.shape)

    def get(self, point: Point | None) -> PointStats | None:
        if point is None or f"{point.key}.mean_sq" not in self._entries:
            return None
        base = point.key
        count = int(np.asarray(self._array(f"{base}.count"))[0])
        vec = {f: np.array(self._array(f"{base}.{f}"), np.float32) for f in ("mean_abs", "mean_sq", "amax")}
        loader = None
        if f"{base}.xtx" in self._entries:
            loader = lambda name=f"{base}.xtx": self._array(name)  # noqa: E731
        return PointStats(point, count, vec["mean_abs"], vec["mean_sq"], vec["amax"], loader)

    def __iter__(self) -> Iterator[PointStats]:
        for p in self.points:
            s = self.get(p)
            if s is not None:
                yield s

    def summary(self) -> dict[str, Any]:
        """JSON-ready provenance for the manifest and the model card (no arrays)."""
        keep = ("key", "version", "model", "text", "tokens", "sequences", "window", "xtx")
        return {k: self.meta[k] for k in keep if k in self.meta} | {"points": len(self.points), "file": str(self.path)}


class StatsWriter:
    """Write a statistics file point by point, in :func:`model_points` order (declared up front)."""

    def __init__(self, path: str | Path, points: Iterable[tuple[Point, int]], meta: dict[str, Any], with_xtx: bool = True):
        self.points = list(points)
        fields = _FIELDS if with_xtx else _FIELDS[:-1]
        specs = [(f"{p.key}.{f}", "f32", _shape(f, k)) for p, k in self.points for f in fields]
        meta = dict(meta, version=STATS_VERSION, points=[[p.layer, p.role, p.expert] for p, _ in self.points],
                    xtx=with_xtx)
        self._fields = fields
        self._writer = SafetensorsWriter(Path(path), specs, {_META_KEY: json.dumps(meta, sort_keys=True)})

    def write(self, point: Point, acc: Accumulator) -> None:
        arrays = acc.arrays()
        for f in self._fields:
            self._writer.write(f"{point.key}.{f}", np.ascontiguousarray(arrays[f], np.float32))

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        """Close the file without completing it (the caller deletes it)."""
        self._writer.__exit__(RuntimeError, None, None)
