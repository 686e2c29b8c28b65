"""A fingerprint of one tensor's stored bytes, the same whether taken whole or chunk by chunk.

``export`` feeds the arrays it writes (row chunk after row chunk) into a :class:`TensorDigest`
and records the result in the manifest; the conformance kit recomputes it from the ``quantize``
hook's arrays (:func:`digest_arrays`) and compares, tensor by tensor.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["TensorDigest", "digest_arrays"]


class TensorDigest:
    """sha256 per array name over the bytes in write order, folded into one hex string."""

    def __init__(self) -> None:
        self._parts: dict[str, "hashlib._Hash"] = {}

    def update(self, key: str, data: np.ndarray | bytes | memoryview) -> None:
        h = self._parts.setdefault(key, hashlib.sha256())
        h.update(data if isinstance(data, (bytes, memoryview)) else np.ascontiguousarray(data).view(np.uint8).data)

    def update_all(self, arrays: dict[str, np.ndarray]) -> None:
        for key, arr in arrays.items():
            self.update(key, arr)

    def hexdigest(self) -> str:
        top = hashlib.sha256()
        for key in sorted(self._parts):
            top.update(f"{key}:{self._parts[key].hexdigest()};".encode())
        return top.hexdigest()


def digest_arrays(arrays: dict[str, np.ndarray]) -> str:
    """The :class:`TensorDigest` of whole arrays (what a tensor's chunks add up to)."""
    d = TensorDigest()
    d.update_all(arrays)
    return d.hexdigest()
