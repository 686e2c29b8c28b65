"""Float conversions between the checkpoint's stored dtype and the dtype we store in ONNX.

Checkpoints arrive as f32, f16 or bf16 (bf16 as raw ``uint16`` bits, since numpy has no bf16).
These helpers work on one chunk at a time so no whole-model copy is ever made.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .external_data import BFLOAT16

__all__ = ["to_float32", "convert", "ONNX_FLOAT_TYPES", "FLOAT_NAMES"]

#: phi-quant float names -> (ONNX element type, numpy dtype or BFLOAT16 marker).
ONNX_FLOAT_TYPES = {
    "fp32": (TensorProto.FLOAT, np.dtype(np.float32)),
    "fp16": (TensorProto.FLOAT16, np.dtype(np.float16)),
    "bf16": (TensorProto.BFLOAT16, BFLOAT16),
}
FLOAT_NAMES = tuple(ONNX_FLOAT_TYPES)


def to_float32(raw: np.ndarray, src_dtype: str) -> np.ndarray:
    """Widen a raw chunk (stored dtype ``f32``/``f16``/``bf16``) to float32 (a copy)."""
    if src_dtype == "bf16":
        return (np.asarray(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(raw).astype(np.float32)


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even), returned as uint16 bits; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def convert(raw: np.ndarray, src_dtype: str, target: str) -> np.ndarray:
    """Convert a raw chunk to ``target`` ("fp32", "fp16", "bf16"; bf16 comes back as uint16 bits).

    A bf16 -> bf16 or f16 -> fp16 request copies the bits unchanged (no double rounding).
    """
    if target == "bf16":
        if src_dtype == "bf16":
            return np.array(raw, dtype=np.uint16, copy=True)
        return _f32_to_bf16_bits(to_float32(raw, src_dtype))
    if target == "fp16":
        if src_dtype == "f16":
            return np.array(raw, dtype=np.float16, copy=True)
        return to_float32(raw, src_dtype).astype(np.float16)
    if target == "fp32":
        return to_float32(raw, src_dtype)
    raise ValueError(f"unknown float target {target!r}")
