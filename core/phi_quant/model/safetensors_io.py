"""The safetensors file format, read and written without loading whole files.

A safetensors file is ``u64 header_len | JSON header | data``; the header maps each tensor name
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative to the data section. We parse
the header ourselves (so every defect becomes a :class:`CheckpointError` naming the file) and
map one tensor's byte range at a time with :class:`numpy.memmap`: the pages of a tensor leave
the process's resident set as soon as the caller drops the array, which keeps streaming a
multi-gigabyte checkpoint at about one tensor of memory.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping

import numpy as np

from ..errors import CheckpointError
from ..fields import describe

__all__ = [
    "ST_DTYPES",
    "NUMPY_DTYPES",
    "HeaderEntry",
    "SafetensorsHeader",
    "read_header",
    "map_bytes",
    "SafetensorsWriter",
]

#: safetensors dtype names -> our short names (only the float types a Phi checkpoint holds).
ST_DTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
_ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
#: numpy storage dtype of each short name (bf16 is carried as its raw 16-bit pattern).
NUMPY_DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "bf16": np.dtype("<u2")}
_ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2}
#: Every dtype the safetensors format defines, with its size: other tensors (an integer buffer, an
#: fp8 scale) may sit in a checkpoint; we validate their offsets and refuse them only if needed.
_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2,
                "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100 * 2**20  # the format's own limit is 100 MB


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor of a safetensors file: where its bytes are, in absolute file offsets."""

    name: str
    dtype: str  # "f32" | "f16" | "bf16", or the format's name (e.g. "I64", "F8_E4M3") for other types
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int
    path: Path  # the file holding it


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    entries: dict[str, HeaderEntry]
    metadata: dict[str, str]


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header as strictly as the format's reference reader.

    Every field has its JSON type (offsets and dims are non-negative integers, ``__metadata__``
    maps strings to strings, no key appears twice), each tensor's byte range matches its shape,
    and the ranges tile the data section exactly: no overlap, no gap, nothing after the last one.
    Any defect is a :class:`CheckpointError` naming the file and the tensor.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is truncated ({size} bytes): not a safetensors file. Re-download it.")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(
                    f"{path} has a corrupt safetensors header (declared length {n}, file {size} bytes). Re-download it."
                )
            blob = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
    header = _parse_header_json(path, blob)
    data_start, data_size = 8 + n, size - 8 - n
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CheckpointError(
            f"{path}: __metadata__ must map names to strings, found {describe(metadata)}; the header is corrupt. "
            "Re-download the file."
        )
    spans: list[tuple[int, int, str]] = []
    entries: dict[str, HeaderEntry] = {}
    for name, spec in header.items():
        st_dtype, shape, begin, end = _header_entry(path, name, spec)
        if data_start + end > size:
            raise CheckpointError(
                f"{path} is truncated: tensor {name!r} ends at byte {data_start + end} but the file has {size}. "
                "Re-download the file."
            )
        spans.append((begin, end, name))
        entries[name] = HeaderEntry(name, ST_DTYPES.get(st_dtype, st_dtype), shape, data_start + begin, end - begin, path)
    _check_tiling(path, spans, data_size)
    return SafetensorsHeader(path, entries, dict(metadata or {}))


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _parse_header_json(path: Path, blob: bytes) -> dict[str, object]:
    try:
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=_unique_keys,
                            parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise CheckpointError(f"{path} has a corrupt safetensors header (nested too deeply). Re-download it.") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, duplicate keys, too many digits
        raise CheckpointError(f"{path} has a corrupt safetensors header ({e}). Re-download it.") from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path} has a corrupt safetensors header (it is {describe(header)}, not a JSON object). Re-download it."
        )
    return header


def _is_count(x: object) -> bool:
    return type(x) is int and x >= 0  # JSON integers only: no bool, no float (1e400 is inf)


def _header_entry(path: Path, name: str, spec: object) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, every field checked."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: header entry {name!r} {what}; the header is corrupt. Re-download the file.")

    if not isinstance(spec, dict):
        raise bad(f"must be an object with dtype, shape and data_offsets, found {describe(spec)}")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in spec]
    if missing:
        raise bad(f"has no {', '.join(missing)}")
    st_dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(st_dtype, str):
        raise bad(f"has dtype {describe(st_dtype)}; expected a name such as BF16")
    if st_dtype not in _ST_ITEMSIZE:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {st_dtype!r}; the header is corrupt.")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"has shape {describe(shape)}; expected a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(x) for x in offsets)):
        raise bad(f"has data_offsets {describe(offsets)}; expected [begin, end] as non-negative integers")
    begin, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    need = numel * _ST_ITEMSIZE[st_dtype]
    if end < begin or end - begin != need:
        raise CheckpointError(
            f"{path}: tensor {name!r} spans bytes [{begin}, {end}) but shape {shape} in {st_dtype} needs "
            f"{need}. The header is corrupt; re-download the file."
        )
    return st_dtype, tuple(shape), begin, end


def _check_tiling(path: Path, spans: list[tuple[int, int, str]], data_size: int) -> None:
    """The byte ranges, sorted, must follow each other from 0 to the end of the file."""
    pos, prev = 0, None
    for begin, end, name in sorted(spans):
        if begin < pos:
            raise CheckpointError(
                f"{path}: tensors {prev!r} and {name!r} overlap (bytes [{begin}, {pos}) of the data section); "
                "the safetensors format forbids it. The file is corrupt or crafted: re-download it."
            )
        if begin > pos:
            raise CheckpointError(
                f"{path}: bytes [{pos}, {begin}) of the data section belong to no tensor (before {name!r}); "
                "the file is corrupt. Re-download it."
            )
        pos, prev = end, name
    if pos != data_size:
        raise CheckpointError(
            f"{path}: the data section has {data_size} bytes but its tensors cover {pos}; "
            "the file is corrupt. Re-download it."
        )


def map_bytes(path: Path, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only memory-mapped array of one byte range (zero rows/elements give an empty array)."""
    numel = 1
    for d in shape:
        numel *= d
    if numel == 0:
        return np.zeros(shape, NUMPY_DTYPES[dtype])
    return np.memmap(path, dtype=NUMPY_DTYPES[dtype], mode="r", offset=offset, shape=shape)


class SafetensorsWriter:
    """Write one safetensors file tensor by tensor, given every name/dtype/shape up front.

    The header must precede the data, so the caller declares the tensors first; then
    :meth:`write` appends each tensor's bytes (possibly in several chunks) in declared order.
    """

    def __init__(self, path: Path, specs: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str] | None = None):
        self.path = Path(path)
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        self._order: list[tuple[str, int]] = []
        pos = 0
        for name, dtype, shape in specs:
            nbytes = _ITEMSIZE[dtype] * int(np.prod(shape, dtype=np.int64))
            header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
            self._order.append((name, nbytes))
            pos += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data section 8-byte aligned, as the reference writer does
        self._f: BinaryIO = open(self.path, "wb")
        self._f.write(struct.pack("<Q", len(blob)))
        self._f.write(blob)
        self._next = 0
        self._written = 0

    def write(self, name: str, data: np.ndarray | bytes) -> None:
        """Append bytes of tensor ``name``; call repeatedly to stream a tensor in chunks."""
        expected, nbytes = self._order[self._next]
        if name != expected:
            raise ValueError(f"expected tensor {expected!r} next, got {name!r}")
        buf = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
        self._f.write(buf)
        self._written += len(buf)
        if self._written > nbytes:
            raise ValueError(f"tensor {name!r}: wrote {self._written} bytes, declared {nbytes}")
        if self._written == nbytes:
            self._next += 1
            self._written = 0

    def close(self) -> None:
        if self._next != len(self._order):
            self._f.close()
            raise ValueError(f"{self.path}: {len(self._order) - self._next} declared tensors were not written")
        self._f.close()

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._f.close()
