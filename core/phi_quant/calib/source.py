"""A checkpoint seen through calibration: AWQ's scales folded into the tensor stream, statistics alongside.

:class:`CalibratedSource` wraps a :class:`~phi_quant.model.source.ModelSource` and is handed to the
backend instead of it. Its ``tensors()`` stream is the checkpoint's own, in the same order, with
each tensor that a fold touches replaced by its scaled float32 version, computed from the
memory-mapped original when the backend reads it: a norm's gains divided by s, a consumer's input
columns multiplied by s, a fold source's rows divided by s. Tensors no fold touches are the
original handles (same dtype, same bytes). The float model it describes computes the same
function as the checkpoint (``tests/test_calibration.py`` checks the logits).

:attr:`CalibratedSource.calibration` is the :class:`CalibrationView` that
:func:`phi_quant.quant.plan.recipe_context` reads: each matmul's input statistics expressed for the
scaled weight (x / s), so GPTQ and the importance weights see the tensor that is quantized.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator

import numpy as np

from ..arch.roles import TensorRole
from ..model.tensors import SourceTensor, TensorInfo
from .awq import LayerScales
from .stats import CalibrationStats, PointStats, input_role, point_of

__all__ = ["CalibrationView", "CalibratedSource"]


class CalibrationView:
    """Per tensor, the statistics of its input in the weight space it is quantized in."""

    def __init__(self, stats: CalibrationStats, scales: dict[int, LayerScales], tied: bool):
        self.stats = stats
        self.scales = scales
        self.tied = tied
        self._recent: OrderedDict[tuple, PointStats | None] = OrderedDict()

    def for_tensor(self, info: TensorInfo) -> PointStats | None:
        """The (scaled) statistics of ``info``'s input, or None (norms, an untied embedding)."""
        key = (info.name, info.layer, info.expert)
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key]
        found = self.stats.get(point_of(info.role, info.layer, info.expert, self.tied))
        if found is not None and info.layer in self.scales:
            col = self.scales[info.layer].column_scale(input_role(info.role), info.expert, found.k)
            if col is not None:
                found = found.scaled(col)
        self._recent[key] = found
        while len(self._recent) > 2:  # the tensor being encoded (and its neighbour), for GPTQ's memo
            self._recent.popitem(last=False)
        return found


class CalibratedSource:
    """A ModelSource whose stream carries AWQ's folded scales and whose tensors carry statistics.

    Everything a backend reads from a source (config, tokenizer files, ``tensor_infos()``,
    ``tensors()``, ``tensor()``) is the wrapped source's, except the scaled tensors (float32).
    """

    def __init__(self, source: Any, view: CalibrationView | None, scales: dict[int, LayerScales], record: dict[str, Any]):
        self._source = source
        self.calibration = view
        self.calibration_record = record
        self._scales = scales
        self._splits = source.config.arch.splits(source.config)
        self._parent = {p.role: (fused, p.start, p.stop) for fused, parts in self._splits.items() for p in parts}

    @property
    def original(self) -> Any:
        """The checkpoint as stored (what the statistics were collected on)."""
        return self._source

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def __enter__(self) -> "CalibratedSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self._source.__exit__(*exc)

    def __repr__(self) -> str:
        return f"CalibratedSource({self._source!r}, {self.calibration_record.get('recipe')})"

    # -- which tensors change -----------------------------------------------------------------------
    def _factors(self, role: TensorRole, layer: int | None, expert: int | None,
                 shape: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(row factor, column factor) of a tensor; for a norm the factor of its single axis as columns."""
        ls = self._scales.get(layer) if layer is not None else None
        if ls is None:
            return None, None
        role = TensorRole(role)
        if role.is_norm:
            s = ls.norm_scale(role)
            return None, (None if s is None else (1.0 / s).astype(np.float32))
        fused, start, stop = self._parent.get(role, (role, 0, shape[0]))
        rows = None
        if fused is not role:
            total = max(p.stop for p in self._splits[fused])
            full = ls.row_scale(fused, total)
            rows = None if full is None else full[start:stop]
        else:
            rows = ls.row_scale(role, shape[0])
        cols = ls.column_scale(fused, expert, shape[-1])
        return rows, cols

    def _wrap(self, t: SourceTensor) -> SourceTensor:
        rows, cols = self._factors(t.role, t.layer, t.expert, tuple(t.shape))
        if rows is None and cols is None:
            return t

        def load(t: SourceTensor = t, rows: np.ndarray | None = rows, cols: np.ndarray | None = cols) -> np.ndarray:
            w = t.to_float32()
            if rows is not None:
                w = w * rows[:, None]
            if cols is not None:
                w = w * cols
            return np.ascontiguousarray(w, np.float32)

        return SourceTensor(t.name, t.role, t.layer, "f32", tuple(t.shape), _loader=load, expert=t.expert)

    def _info(self, info: TensorInfo) -> TensorInfo:
        rows, cols = self._factors(info.role, info.layer, info.expert, tuple(info.shape))
        if rows is None and cols is None:
            return info
        return TensorInfo(info.name, info.role, info.layer, "f32", tuple(info.shape), expert=info.expert)

    # -- the source API ---------------------------------------------------------------------------
    def tensor_infos(self, split: bool = False) -> list[TensorInfo]:
        return [self._info(i) for i in self._source.tensor_infos(split)]

    def tensors(self, split: bool = False) -> Iterator[SourceTensor]:
        for t in self._source.tensors(split):
            yield self._wrap(t)

    def tensor(self, role: TensorRole | str, layer: int | None = None, expert: int | None = None) -> SourceTensor:
        if expert is None:
            return self._wrap(self._source.tensor(role, layer))
        return self._wrap(self._source.tensor(role, layer, expert))

    def wrap(self, tensor: SourceTensor) -> SourceTensor:
        """This stream's version of a tensor read from the original source."""
        return self._wrap(tensor)

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.tensor_infos())
