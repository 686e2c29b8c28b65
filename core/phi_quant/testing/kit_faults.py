"""Faults the conformance kit injects: a tensor stream that breaks halfway, and poisoned weights.

They are built from the real tiny checkpoints, so a backend meets the fault exactly where it
would meet it in the field: in the middle of ``source.tensors()``, or in one tensor's bytes.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["InjectedFailure", "FailingSource", "poison_checkpoint", "POISON_BITS"]

#: Bit patterns of NaN and +Inf in each stored dtype (safetensors dtype name -> value).
POISON_BITS = {
    "nan": {"BF16": (np.uint16, 0x7FC0), "F16": (np.uint16, 0x7E00), "F32": (np.uint32, 0x7FC00000)},
    "inf": {"BF16": (np.uint16, 0x7F80), "F16": (np.uint16, 0x7C00), "F32": (np.uint32, 0x7F800000)},
}


class InjectedFailure(RuntimeError):
    """Raised by :class:`FailingSource` in the middle of the tensor stream."""


class FailingSource:
    """Wraps a ModelSource; its tensor stream raises :class:`InjectedFailure` after ``after`` tensors.

    Everything else (config, tokenizer files, ``tensor_infos``) is the real source's.
    """

    def __init__(self, source: Any, after: int):
        self._source = source
        self._after = after
        self.yielded = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def tensors(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for i, t in enumerate(self._source.tensors(*args, **kwargs)):
            if i == self._after:
                raise InjectedFailure(f"injected failure after {i} tensors (conformance kit)")
            self.yielded += 1
            yield t

    def __enter__(self) -> "FailingSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._source.__exit__(*exc)

    def close(self) -> None:
        self._source.close()


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def poison_checkpoint(src: Path, dst: Path, tensor: str, kind: str = "nan") -> Path:
    """Copy checkpoint ``src`` to ``dst`` with one element of ``tensor`` set to NaN or Inf.

    The poisoned element sits in the middle of the tensor, so a check that looks only at the
    first block or the first row misses it. Works on the stored bytes: any dtype, no framework.
    """
    shutil.copytree(src, dst)
    for f in sorted(Path(dst).glob("*.safetensors")):
        start, header = _header(f)
        entry = header.get(tensor)
        if entry is None:
            continue
        dtype, bits = POISON_BITS[kind][entry["dtype"]]
        begin, end = entry["data_offsets"]
        count = (end - begin) // np.dtype(dtype).itemsize
        data = np.memmap(f, dtype=dtype, mode="r+", offset=start + begin, shape=(count,))
        data[count // 2 + 1] = bits
        data.flush()
        del data
        return Path(dst)
    raise KeyError(f"tensor {tensor!r} is not in {src}")
