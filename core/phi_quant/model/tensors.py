"""What one tensor of the checkpoint stream looks like to backends.

A :class:`SourceTensor` is a handle, not data: ``raw()`` returns a zero-copy view into the
memory-mapped safetensors file in the stored dtype, so streaming a model costs about one tensor
of memory at a time. ``role``, ``layer`` and ``expert`` say what the tensor is, so writers never
parse HF names. :class:`TensorRole` lives in :mod:`phi_quant.arch.roles` (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..arch.phi3 import ARCHITECTURE as _PHI3
from ..arch.roles import TensorRole

__all__ = ["TensorRole", "SourceTensor", "TensorInfo", "hf_name", "DTYPE_ITEMSIZE"]

DTYPE_ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2}


def hf_name(role: TensorRole, layer: int | None = None) -> str:
    """The Phi3ForCausalLM tensor name of a role; other architectures: ``config.arch.hf_name``."""
    return _PHI3.hf_name(role, layer)


@dataclass(frozen=True)
class TensorInfo:
    """Name, role, dtype and shape of a tensor, known without reading its data (for headers)."""

    name: str
    role: TensorRole
    layer: int | None
    dtype: str  # stored dtype: "f32" | "f16" | "bf16"
    shape: tuple[int, ...]
    #: Expert index inside a mixture-of-experts layer (None elsewhere). Keyword-only, so it
    #: comes after SourceTensor's loader in positional construction.
    expert: int | None = field(default=None, kw_only=True)

    @property
    def nbytes(self) -> int:
        n = DTYPE_ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class SourceTensor(TensorInfo):
    """A tensor of the stream: metadata plus a lazy, zero-copy view of its bytes."""

    _loader: Callable[[], np.ndarray] = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def raw(self) -> np.ndarray:
        """Memory-mapped view in the stored dtype (bf16 is returned as ``uint16``), C-contiguous."""
        return self._loader()

    def to_float32(self) -> np.ndarray:
        """A float32 copy of this one tensor (allocates ``numel * 4`` bytes)."""
        a = self.raw()
        if self.dtype == "bf16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float32)

    def info(self) -> TensorInfo:
        return TensorInfo(self.name, self.role, self.layer, self.dtype, self.shape, expert=self.expert)
