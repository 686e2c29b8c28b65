"""Float conversions between the checkpoint's stored dtype and the dtype we store in ONNX.

Checkpoints arrive as f32, f16 or bf16 (bf16 as raw ``uint16`` bits, since numpy has no bf16).
These helpers work on one chunk at a time so no whole-model copy is ever made.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from phi_quant import quant

from .external_data import BFLOAT16

__all__ = ["to_float32", "convert", "ONNX_FLOAT_TYPES", "FLOAT_NAMES"]

#: phi-quant float names -> (ONNX element type, numpy dtype or BFLOAT16 marker).
ONNX_FLOAT_TYPES = {
    "fp32": (TensorProto.FLOAT, np.dtype(np.float32)),
    "fp16": (TensorProto.FLOAT16, np.dtype(np.float16)),
    "bf16": (TensorProto.BFLOAT16, BFLOAT16),
}
FLOAT_NAMES = tuple(ONNX_FLOAT_TYPES)


def _as_stored(raw: np.ndarray, src_dtype: str) -> np.ndarray:
    """A contiguous array in the stored dtype (computed tables such as rotary caches may be float64)."""
    if src_dtype == "f32":
        return np.ascontiguousarray(raw, dtype=np.float32)
    return np.ascontiguousarray(raw)


def to_float32(raw: np.ndarray, src_dtype: str) -> np.ndarray:
    """Widen a raw chunk (stored dtype ``f32``/``f16``/``bf16``) to float32 (a copy)."""
    return quant.to_float32(_as_stored(raw, src_dtype), src_dtype)


def convert(raw: np.ndarray, src_dtype: str, target: str) -> np.ndarray:
    """Convert a raw chunk to ``target`` ("fp32", "fp16", "bf16"; bf16 comes back as uint16 bits).

    The core kernel does the rounding (nearest even, in C, no float32 detour for bf16/f16
    sources); a bf16 -> bf16 or f16 -> fp16 request copies the bits unchanged.
    """
    stored = _as_stored(raw, src_dtype)
    if target == "bf16":
        return quant.to_bfloat16(stored, src_dtype)
    if target == "fp16":
        return quant.to_float16(stored, src_dtype)
    if target == "fp32":
        return quant.to_float32(stored, src_dtype)
    raise ValueError(f"unknown float target {target!r}")
