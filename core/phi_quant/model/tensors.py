"""What one tensor of the checkpoint stream looks like to backends.

A :class:`SourceTensor` is a handle, not data: ``raw()`` returns a zero-copy view into the
memory-mapped safetensors file in the stored dtype, so streaming a model costs about one tensor
of memory at a time; ``row_blocks()`` maps one block of rows at a time (about one block of
memory) and asks the disk for the next block while the caller works on the current one.
``role``, ``layer`` and ``expert`` say what the tensor is, so writers never parse HF names.
:class:`TensorRole` lives in :mod:`phi_quant.arch.roles` (re-exported here).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..arch.phi3 import ARCHITECTURE as _PHI3
from ..arch.roles import TensorRole
from .safetensors_io import NUMPY_DTYPES, map_bytes

__all__ = ["TensorRole", "SourceTensor", "TensorInfo", "FileRows", "hf_name", "DTYPE_ITEMSIZE"]

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

    def row_blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(r0, rows r0 .. r0+rows-1)`` for consecutive blocks of a 2-D tensor (a 1-D one is one block).

        Each block is its own read-only mapping: a caller that drops a block before taking the next
        keeps about one block resident, however large the tensor. The next block is mapped and
        announced to the kernel (``madvise(MADV_WILLNEED)``: read-ahead from the disk, nothing
        added to this process's memory) before the current one is returned, so reading a cold
        checkpoint overlaps with the caller's work on the current block.
        """
        if len(self.shape) < 2:
            yield 0, self.raw()
            return
        n = self.shape[0]
        file_rows = self._loader if isinstance(self._loader, FileRows) else None
        if file_rows is None or self.nbytes == 0:  # in-memory data (tests, edited tensors): slices of it
            raw = self.raw()
            for r0 in range(0, n, rows):
                yield r0, raw[r0 : r0 + rows]
            return
        with open(file_rows.path, "rb") as f:
            nxt = file_rows.block(f.fileno(), 0, rows)
            for r0 in range(0, n, rows):
                cur, nxt = nxt, (file_rows.block(f.fileno(), r0 + rows, rows) if r0 + rows < n else None)
                yield r0, cur
                del cur

    def to_float32(self) -> np.ndarray:
        """A float32 copy of this one tensor (allocates ``numel * 4`` bytes)."""
        a = self.raw()
        if self.dtype == "bf16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float32)

    def info(self) -> TensorInfo:
        return TensorInfo(self.name, self.role, self.layer, self.dtype, self.shape, expert=self.expert)


_WILLNEED = getattr(mmap, "MADV_WILLNEED", None)


@dataclass(frozen=True)
class FileRows:
    """The loader of a tensor whose rows lie in a file at ``offset``: all at once (``raw()``) or a block at a time."""

    path: Path
    offset: int
    dtype: str  # stored dtype: "f32" | "f16" | "bf16"
    shape: tuple[int, ...]

    def __call__(self) -> np.ndarray:
        return map_bytes(self.path, self.offset, self.dtype, self.shape)

    def block(self, fd: int, r0: int, rows: int) -> np.ndarray:
        """Rows [r0, r0 + rows) of the open file ``fd``, read-only, in a mapping of their own (read-ahead requested)."""
        dtype = NUMPY_DTYPES[self.dtype]
        n = min(self.shape[0], r0 + rows) - r0
        row_bytes = dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        offset = self.offset + r0 * row_bytes
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        m = mmap.mmap(fd, offset - start + n * row_bytes, offset=start, access=mmap.ACCESS_READ)
        if _WILLNEED is not None:
            m.madvise(_WILLNEED)
        return np.frombuffer(m, dtype=dtype, count=n * row_bytes // dtype.itemsize, offset=offset - start).reshape(
            (n, *self.shape[1:]))
