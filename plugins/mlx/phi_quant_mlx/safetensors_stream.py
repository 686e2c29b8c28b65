"""Sharded safetensors files written incrementally, one slice of one tensor at a time.

The safetensors header lists every tensor's dtype, shape and byte range before any data, so the
whole layout is planned first (from shapes alone); then each tensor's bytes are written at their
planned offset as they are produced, possibly in row chunks, and never held in memory together.
Format: u64 little-endian header length, JSON header padded with spaces to 8 bytes, data.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from .constants import INDEX_FILE, SHARD_METADATA, SHARD_PATTERN, SINGLE_SHARD

__all__ = ["TensorSpec", "ShardPlan", "plan_shards", "ShardedWriter", "ITEMSIZE"]

#: Bytes per element of each safetensors dtype we write.
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "U32": 4}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the output: its name, safetensors dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


@dataclass
class ShardPlan:
    """Which file each tensor goes to and where its bytes start in that file."""

    files: list[str]
    tensors: dict[str, tuple[int, TensorSpec, int]]  # name -> (file index, spec, absolute offset)
    headers: list[bytes]

    @property
    def total_bytes(self) -> int:
        return sum(spec.nbytes for _, spec, _ in self.tensors.values())


def _header(specs: list[TensorSpec]) -> bytes:
    meta: dict[str, object] = {"__metadata__": dict(SHARD_METADATA)}
    offset = 0
    for s in specs:
        meta[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    text = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def plan_shards(specs: Iterable[TensorSpec], max_shard_bytes: int) -> ShardPlan:
    """Greedy split in stream order (as mlx-lm's ``make_shards``): a new file starts when the next
    tensor would pass ``max_shard_bytes``; a tensor larger than the bound gets a file of its own."""
    groups: list[list[TensorSpec]] = []
    size = 0
    for spec in specs:
        if not groups or size + spec.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += spec.nbytes
    if not groups:
        groups.append([])
    n = len(groups)
    files = [SINGLE_SHARD] if n == 1 else [SHARD_PATTERN.format(i + 1, n) for i in range(n)]
    tensors: dict[str, tuple[int, TensorSpec, int]] = {}
    headers = []
    for i, group in enumerate(groups):
        head = _header(group)
        headers.append(head)
        offset = len(head)
        for spec in group:
            if spec.name in tensors:
                raise ValueError(f"tensor {spec.name} planned twice")
            tensors[spec.name] = (i, spec, offset)
            offset += spec.nbytes
    return ShardPlan(files=files, tensors=tensors, headers=headers)


class ShardedWriter:
    """Writes planned tensors into their shards; ``close`` checks every byte was written.

    ``write(name, data, start=0)`` puts ``data`` (any array; its raw bytes are used) at byte
    ``start`` of tensor ``name``; a tensor may arrive in several slices, in any order.
    """

    def __init__(self, directory: Path, plan: ShardPlan):
        self.directory = Path(directory)
        self.plan = plan
        self._written = {name: 0 for name in plan.tensors}
        self._files: list[BinaryIO] = []
        for name, head in zip(plan.files, plan.headers):
            fh = open(self.directory / name, "wb")
            fh.write(head)
            self._files.append(fh)

    def write(self, name: str, data: np.ndarray, start: int = 0) -> None:
        try:
            index, spec, offset = self.plan.tensors[name]
        except KeyError:
            raise ValueError(f"tensor {name} is not in the shard plan") from None
        buf = memoryview(np.ascontiguousarray(data)).cast("B")
        if start < 0 or start + buf.nbytes > spec.nbytes:
            raise ValueError(f"{name}: bytes [{start}, {start + buf.nbytes}) fall outside its {spec.nbytes} bytes")
        fh = self._files[index]
        fh.seek(offset + start)
        fh.write(buf)
        self._written[name] += buf.nbytes

    def close(self) -> None:
        """Close the files and fail loudly if any planned tensor is incomplete."""
        for fh in self._files:
            fh.close()
        self._files = []
        short = [n for n, (_, spec, _) in self.plan.tensors.items() if self._written[n] != spec.nbytes]
        if short:
            raise ValueError(f"tensors not completely written: {', '.join(short[:5])}")

    def abort(self) -> None:
        for fh in self._files:
            fh.close()
        self._files = []

    def write_index(self, total_parameters: int | None = None) -> str | None:
        """``model.safetensors.index.json`` (weight map sorted by name, as mlx-lm writes it)."""
        meta: dict[str, int] = {"total_size": self.plan.total_bytes}
        if total_parameters is not None:
            meta["total_parameters"] = total_parameters
        weight_map = {name: self.plan.files[i] for name, (i, _, _) in sorted(self.plan.tensors.items())}
        (self.directory / INDEX_FILE).write_text(
            json.dumps({"metadata": meta, "weight_map": weight_map}, indent=4), encoding="utf-8"
        )
        return INDEX_FILE
