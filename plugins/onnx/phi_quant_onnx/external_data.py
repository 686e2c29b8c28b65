"""Stream weights into one ONNX external-data file and describe them as initializers.

Why not ``onnx.save(..., save_as_external_data=True)``: that needs every tensor in memory inside
the ModelProto first. Here each tensor's bytes go straight to the file as they are produced (in
chunks if the caller likes), and the graph keeps only a small ``TensorProto`` per tensor that
points at ``location`` / ``offset`` / ``length``. Large tensors start on a 64 KiB boundary so
ONNX Runtime can memory-map them.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Sequence

import os

import numpy as np
from onnx import TensorProto

__all__ = ["ExternalDataWriter", "NUMPY_TO_ONNX", "BFLOAT16"]

#: Marker dtype for bfloat16 payloads (numpy has no bf16; we carry the raw uint16 bits).
BFLOAT16 = "bfloat16"

NUMPY_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int64): TensorProto.INT64,
    BFLOAT16: TensorProto.BFLOAT16,
}

_LARGE = 1 << 20
_LARGE_ALIGN = 1 << 16
_SMALL_ALIGN = 64


class ExternalDataWriter:
    """Appends tensor payloads to ``<dir>/<location>`` and returns initializers that reference them."""

    def __init__(self, directory: Path, location: str):
        self.location = location
        self.path = Path(directory) / location
        self._file: BinaryIO = open(self.path, "wb")
        self._offset = 0
        self._open: tuple[str, int, tuple[int, ...], int] | None = None  # name, dtype, dims, start
        self.bytes_written = 0

    # -- chunked API: begin, write chunks, end --------------------------------------------------
    def begin(self, name: str, onnx_dtype: int, dims: Sequence[int], nbytes_hint: int = 0) -> None:
        """Start a tensor whose bytes will arrive through :meth:`write` (row-major, in order)."""
        if self._open is not None:
            raise RuntimeError(f"tensor {self._open[0]!r} is still being written")
        align = _LARGE_ALIGN if nbytes_hint >= _LARGE else _SMALL_ALIGN
        pad = (-self._offset) % align
        if pad:
            self._file.write(b"\0" * pad)
            self._offset += pad
        self._open = (name, onnx_dtype, tuple(int(d) for d in dims), self._offset)

    def write(self, chunk: np.ndarray | bytes | memoryview) -> None:
        if self._open is None:
            raise RuntimeError("write() without begin()")
        if isinstance(chunk, np.ndarray):
            chunk = np.ascontiguousarray(chunk)
            self._file.write(memoryview(chunk).cast("B"))
            n = chunk.nbytes
        else:
            self._file.write(chunk)
            n = len(chunk)
        self._offset += n
        self.bytes_written += n

    def end(self) -> TensorProto:
        """Finish the open tensor and return its initializer (no data inside, only the reference)."""
        if self._open is None:
            raise RuntimeError("end() without begin()")
        name, onnx_dtype, dims, start = self._open
        self._open = None
        length = self._offset - start
        expected = int(np.prod(dims, dtype=np.int64)) * _itemsize(onnx_dtype)
        if length != expected:
            raise RuntimeError(f"tensor {name!r}: wrote {length} bytes, shape {dims} needs {expected}")
        return _external_tensor(name, onnx_dtype, dims, self.location, start, length)

    # -- random-access API: reserve a region, fill it in any order ------------------------------
    def reserve(self, name: str, onnx_dtype: int, dims: Sequence[int]) -> "Region":
        """Reserve space for a tensor whose bytes arrive out of order (e.g. a transpose by row blocks)."""
        nbytes = int(np.prod(dims, dtype=np.int64)) * _itemsize(onnx_dtype)
        self.begin(name, onnx_dtype, dims, nbytes)
        start = self._offset
        self._file.flush()
        self._file.truncate(start + nbytes)
        self._file.seek(start + nbytes)
        self._offset += nbytes
        self.bytes_written += nbytes
        return Region(self, start, nbytes)

    def allocate(self, name: str, onnx_dtype: int, dims: Sequence[int]) -> tuple[TensorProto, "Region"]:
        """Reserve space for a tensor and return its initializer at once, with the region to fill.

        Unlike :meth:`reserve`, nothing stays open: several allocated tensors (a mixture-of-experts
        layer's stacked weights, scales and zero points) can be filled side by side while others
        are appended.
        """
        region = self.reserve(name, onnx_dtype, dims)
        return self.end(), region

    # -- one-shot API ----------------------------------------------------------------------------
    def add(self, name: str, array: np.ndarray, onnx_dtype: int | None = None) -> TensorProto:
        """Write a whole array as one tensor (``onnx_dtype`` overrides, e.g. bf16 carried as uint16)."""
        dtype = onnx_dtype if onnx_dtype is not None else NUMPY_TO_ONNX[np.dtype(array.dtype)]
        self.begin(name, dtype, array.shape, array.nbytes)
        self.write(array)
        return self.end()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()

    def __enter__(self) -> "ExternalDataWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Region:
    """A reserved byte range of the data file, written with positional writes."""

    def __init__(self, writer: ExternalDataWriter, start: int, nbytes: int):
        self._writer, self.start, self.nbytes = writer, start, nbytes

    def write_at(self, offset: int, data: np.ndarray) -> None:
        """Write ``data``'s bytes at ``offset`` bytes into the region."""
        buf = memoryview(np.ascontiguousarray(data)).cast("B")
        if offset < 0 or offset + buf.nbytes > self.nbytes:
            raise ValueError(f"write of {buf.nbytes} bytes at {offset} is outside the {self.nbytes}-byte region")
        fd = self._writer._file.fileno()
        done = 0
        while done < buf.nbytes:
            done += os.pwrite(fd, buf[done:], self.start + offset + done)

    def finish(self) -> TensorProto:
        return self._writer.end()


_ITEMSIZE = {
    TensorProto.FLOAT: 4,
    TensorProto.FLOAT16: 2,
    TensorProto.BFLOAT16: 2,
    TensorProto.UINT8: 1,
    TensorProto.INT8: 1,
    TensorProto.INT32: 4,
    TensorProto.INT64: 8,
}


def _itemsize(onnx_dtype: int) -> int:
    return _ITEMSIZE[onnx_dtype]


def _external_tensor(name: str, onnx_dtype: int, dims: Sequence[int], location: str, offset: int, length: int) -> TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = onnx_dtype
    t.dims.extend(int(d) for d in dims)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key = key
        entry.value = value
    return t
