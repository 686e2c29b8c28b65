"""A streaming GGUF v3 writer: header and tensor index first, then tensor data in index order.

gguf-py's ``GGUFWriter`` wants every tensor (or a temporary file) before it writes; we know each
tensor's type and shape from the config, so the whole header can be written up front and each
tensor's bytes appended the moment they are produced. Peak memory is one chunk of one tensor.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable

import numpy as np

from .constants import ALIGNMENT, BLOCK_SIZES, GGUF_MAGIC, GGUF_VERSION, GGMLType, ValueType

__all__ = ["TensorSlot", "GGUFStreamWriter", "tensor_nbytes", "Typed"]


@dataclass(frozen=True)
class Typed:
    """A metadata value with an explicit GGUF type (plain Python values get a default type)."""

    value: Any
    type: ValueType


def tensor_nbytes(ggml_type: GGMLType, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of numpy ``shape`` (rows last-dim contiguous) stored as ``ggml_type``."""
    block, size = BLOCK_SIZES[GGMLType(ggml_type)]
    row = shape[-1]
    if row % block:
        raise ValueError(f"row length {row} is not a multiple of the {GGMLType(ggml_type).name} block ({block})")
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows * (row // block) * size


@dataclass(frozen=True)
class TensorSlot:
    """One entry of the tensor index: name, numpy shape (outermost first) and ggml type."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.type, self.shape)


def _pad(n: int, align: int = ALIGNMENT) -> int:
    return (n + align - 1) // align * align


def _string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


_SCALAR = {
    ValueType.UINT8: "<B", ValueType.INT8: "<b", ValueType.UINT16: "<H", ValueType.INT16: "<h",
    ValueType.UINT32: "<I", ValueType.INT32: "<i", ValueType.FLOAT32: "<f", ValueType.BOOL: "<?",
    ValueType.UINT64: "<Q", ValueType.INT64: "<q", ValueType.FLOAT64: "<d",
}
_NUMPY = {
    ValueType.UINT8: "<u1", ValueType.INT8: "<i1", ValueType.UINT16: "<u2", ValueType.INT16: "<i2",
    ValueType.UINT32: "<u4", ValueType.INT32: "<i4", ValueType.FLOAT32: "<f4", ValueType.BOOL: "?",
    ValueType.UINT64: "<u8", ValueType.INT64: "<i8", ValueType.FLOAT64: "<f8",
}


def _default_type(value: Any) -> ValueType:
    if isinstance(value, bool):
        return ValueType.BOOL
    if isinstance(value, int):
        return ValueType.UINT32
    if isinstance(value, float):
        return ValueType.FLOAT32
    if isinstance(value, (str, bytes)):
        return ValueType.STRING
    raise TypeError(f"no default GGUF type for {type(value).__name__}; wrap it in Typed(...)")


def _encode_value(value: Any, vtype: ValueType, elem: ValueType | None = None) -> bytes:
    if vtype == ValueType.STRING:
        return _string(value)
    if vtype == ValueType.ARRAY:
        assert elem is not None
        items = list(value) if not isinstance(value, np.ndarray) else value
        head = struct.pack("<IQ", int(elem), len(items))
        if elem == ValueType.STRING:
            return head + b"".join(_string(s) for s in items)
        return head + np.asarray(items, dtype=_NUMPY[elem]).tobytes()
    return struct.pack(_SCALAR[vtype], value)


def encode_kv(key: str, value: Any) -> bytes:
    """One metadata pair. Lists become arrays typed by their first element (or ``Typed(list, elem)``)."""
    if isinstance(value, Typed):
        raw, vtype = value.value, value.type
        if isinstance(raw, (list, tuple, np.ndarray)):
            return _string(key) + struct.pack("<I", ValueType.ARRAY) + _encode_value(raw, ValueType.ARRAY, vtype)
        return _string(key) + struct.pack("<I", vtype) + _encode_value(raw, vtype)
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"empty array for {key}: give its element type with Typed([], ValueType.X)")
        elem = _default_type(value[0])
        return _string(key) + struct.pack("<I", ValueType.ARRAY) + _encode_value(value, ValueType.ARRAY, elem)
    vtype = _default_type(value)
    return _string(key) + struct.pack("<I", vtype) + _encode_value(value, vtype)


class GGUFStreamWriter:
    """Write a GGUF file whose tensor index is known before any tensor data exists.

    Usage: ``w = GGUFStreamWriter(fh, metadata, slots)`` writes the header; then call
    ``w.write(name, chunk)`` with each tensor's bytes in index order (a tensor may arrive in
    several chunks); ``w.finish()`` checks that every tensor was written in full.
    """

    def __init__(self, fh: BinaryIO, metadata: dict[str, Any], slots: Iterable[TensorSlot]):
        self._fh = fh
        self._slots = list(slots)
        names = [s.name for s in self._slots]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names in the GGUF index")
        head = bytearray(GGUF_MAGIC)
        head += struct.pack("<IQQ", GGUF_VERSION, len(self._slots), len(metadata))
        for key, value in metadata.items():
            head += encode_kv(key, value)
        offset = 0
        self._offsets = []
        for s in self._slots:
            head += _string(s.name)
            dims = tuple(reversed(s.shape))  # ggml order: innermost (row length) first
            head += struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
            head += struct.pack("<IQ", int(s.type), offset)
            self._offsets.append(offset)
            offset = _pad(offset + s.nbytes)
        head += b"\0" * (_pad(len(head)) - len(head))
        fh.write(head)
        self._data_start = len(head)
        self._index = 0  # tensor being written
        self._written = 0  # bytes of it written so far

    def write(self, name: str, chunk: bytes | np.ndarray) -> None:
        """Append bytes of tensor ``name``; tensors must come in index order."""
        if self._index >= len(self._slots):
            raise ValueError(f"tensor {name!r} written after the last tensor of the index")
        slot = self._slots[self._index]
        if name != slot.name:
            raise ValueError(f"tensor {name!r} written out of order; the index expects {slot.name!r} next")
        data = memoryview(np.ascontiguousarray(chunk)).cast("B") if isinstance(chunk, np.ndarray) else memoryview(chunk)
        if self._written + data.nbytes > slot.nbytes:
            raise ValueError(f"tensor {name!r}: {self._written + data.nbytes} bytes written, index says {slot.nbytes}")
        self._fh.write(data)
        self._written += data.nbytes
        if self._written == slot.nbytes:
            self._fh.write(b"\0" * (_pad(slot.nbytes) - slot.nbytes))
            self._index += 1
            self._written = 0

    def finish(self) -> None:
        """Check that every tensor of the index was written in full."""
        if self._index != len(self._slots):
            missing = self._slots[self._index].name
            raise ValueError(f"GGUF incomplete: tensor {missing!r} and {len(self._slots) - self._index - 1} more not written")
        self._fh.flush()
