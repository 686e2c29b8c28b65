"""One checkpoint tensor -> the arrays its IR constants hold, byte for byte.

The math is the core's (:func:`phi_quant.quant.encode.encode`: values from the recipe, by default
NNCF's round to nearest; the kernel packs OpenVINO's u4/i4 layout with element 0 in the low
nibble; ``to_float16`` rounds to nearest even); this module picks the call per scheme and names
the arrays as :func:`.weights.array_layout` does.
"""

from __future__ import annotations

import numpy as np

from phi_quant import quant as q
from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.model.checks import check_finite
from phi_quant.model.tensors import SourceTensor

from . import constants as C
from .schemes import TensorScheme, core_scheme

__all__ = ["pack", "dequantize", "row_chunks", "chunk_rows", "CHUNK_ELEMENTS"]


#: Elements converted per chunk: rows are independent in every scheme (scales run along K), so
#: a big tensor is packed a few MB at a time and the temporaries never reach the tensor's size.
CHUNK_ELEMENTS = 1 << 22


def chunk_rows(tensor: SourceTensor) -> int:
    """Rows per chunk: about CHUNK_ELEMENTS, even so that 4-bit data starts on a byte."""
    per_row = int(np.prod(tensor.shape[1:])) if len(tensor.shape) > 1 else 1
    return max(2, (CHUNK_ELEMENTS // max(per_row, 1)) // 2 * 2)


def row_chunks(tensor: SourceTensor) -> list[tuple[int, int]]:
    """Row ranges [r0, r1) of :func:`chunk_rows` rows each (a 1-D tensor is one range)."""
    n = tensor.shape[0]
    if len(tensor.shape) == 1:
        return [(0, n)]
    rows = chunk_rows(tensor)
    return [(r, min(n, r + rows)) for r in range(0, n, rows)]


def pack(tensor: SourceTensor, scheme: TensorScheme, rows: tuple[int, int] | None = None, recipe=None,
         context=None, block: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Arrays for ``tensor`` (or its rows ``rows``) under ``scheme``, keyed like :func:`.weights.array_layout`;
    integer values chosen by the core's ``recipe`` (default: NNCF's round to nearest).

    ``block`` is those rows already read (from :meth:`SourceTensor.row_blocks`).
    """
    raw = block if block is not None else tensor.raw()
    if block is None and rows is not None and len(tensor.shape) > 1:
        raw = raw[rows[0] : rows[1]]
    if tensor.role.is_norm or scheme.mode in (C.FP32, C.FP16):
        check_finite(raw, tensor.name, dtype=tensor.dtype)  # integer encoding refuses NaN/Inf itself
    if tensor.role.is_norm or scheme.mode == C.FP32:
        return {"weight": q.to_float32(raw, tensor.dtype, name=tensor.name)}
    if scheme.mode == C.FP16:
        half = q.to_float16(raw, tensor.dtype, name=tensor.name)
        if not np.isfinite(half).all():
            raise UnsupportedPrecisionError(
                f"tensor {tensor.name} has values beyond float16's range (±65504); export it at fp32 or int8"
            )
        return {"weight": half}
    from phi_quant.quant.encode import encode

    return encode(raw, tensor.dtype, core_scheme(scheme), recipe, context=context, name=tensor.name)


def dequantize(arrays: dict[str, np.ndarray], scheme: TensorScheme, shape: tuple[int, int]) -> np.ndarray:
    """float32 [N, K] of what the runtime computes from ``arrays``: (q - zp) * scale."""
    if scheme.mode in (C.FP32, C.FP16):
        return arrays["weight"].astype(np.float32).reshape(shape)
    n, k = shape
    g = scheme.group_size or k
    signed = scheme.mode in (C.INT4_SYM, C.INT8_SYM)
    four_bit = C.BITS[scheme.mode] == 4
    if four_bit:
        w = q.unpack_4bit(arrays["weight"], n * k, signed=signed)
    else:
        w = arrays["weight"].view(np.int8 if signed else np.uint8)
    w = w.reshape(n, k // g, g).astype(np.float32)
    if "zero_point" in arrays:
        zp = arrays["zero_point"]
        zp = q.unpack_4bit(zp, n * (k // g)) if four_bit else zp
        w = w - zp.reshape(n, k // g, 1).astype(np.float32)
    # the graph says f16 Multiply, but the CPU plugin decompresses in f32 (no f16 rounding of the
    # product); tests/test_runtime.py pins that the IR's logits equal an oracle using these weights
    w = w * arrays["scale"].reshape(n, k // g, 1).astype(np.float32)
    return w.reshape(n, k)
