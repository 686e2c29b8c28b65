"""Checks on weight values that every backend runs before writing a tensor."""

from __future__ import annotations

import numpy as np

from ..errors import BadWeightsError

__all__ = ["check_finite", "count_nonfinite"]

_CHUNK = 1 << 22  # elements per pass: bounds the temporary boolean arrays to a few MB


def count_nonfinite(raw: np.ndarray, dtype: str) -> int:
    """Number of NaN/Inf elements of ``raw`` stored as ``dtype`` ("bf16" arrays are uint16 bit patterns)."""
    flat = np.asarray(raw).reshape(-1)
    bad = 0
    for start in range(0, flat.size, _CHUNK):
        part = flat[start : start + _CHUNK]
        if dtype == "bf16":
            # exponent all ones <=> Inf or NaN
            bad += int(np.count_nonzero((part & np.uint16(0x7F80)) == np.uint16(0x7F80)))
        else:
            bad += int(part.size - np.count_nonzero(np.isfinite(part)))
    return bad


def check_finite(tensor: object, name: str | None = None, *, dtype: str | None = None) -> None:
    """Raise :class:`BadWeightsError` naming the tensor if it holds NaN or Inf.

    ``tensor`` is a :class:`~phi_quant.model.tensors.SourceTensor` (its stored bytes are checked
    without a float copy) or a numpy array (``dtype`` "bf16" when it holds bf16 bit patterns).
    """
    if hasattr(tensor, "raw") and hasattr(tensor, "dtype") and isinstance(getattr(tensor, "dtype"), str):
        arr, kind, label = tensor.raw(), tensor.dtype, name or tensor.name  # type: ignore[attr-defined]
    else:
        arr = np.asarray(tensor)
        kind = dtype or ("bf16" if arr.dtype == np.uint16 else str(arr.dtype))
        label = name or "<array>"
    bad = count_nonfinite(arr, kind)
    if bad:
        raise BadWeightsError(
            f"tensor {label} holds {bad} NaN/Inf value(s) of {arr.size}; the checkpoint is damaged or was saved "
            "after a diverged training step. Re-download it or fix the weights before converting."
        )
