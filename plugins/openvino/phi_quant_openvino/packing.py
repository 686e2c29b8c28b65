"""One checkpoint tensor -> the arrays its IR constants hold, byte for byte.

The integer math is the core kernel's (``phi_quant.quant.nncf_compress``, NNCF's rules); this
module only lays the results out as OpenVINO stores them: 4-bit values two per byte, element 0 in
the low nibble, the grouped shapes of :func:`.weights.array_layout`, scales as f16.
"""

from __future__ import annotations

import numpy as np

from phi_quant.model.checks import check_finite
from phi_quant.model.tensors import SourceTensor

from . import constants as C
from .schemes import TensorScheme

__all__ = ["pack", "pack_nibbles", "unpack_nibbles", "dequantize"]

def _to_float32(tensor: SourceTensor, raw: np.ndarray) -> np.ndarray:
    if tensor.dtype == "bf16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """4-bit values (one per byte, any int dtype) -> bytes with element 2i in the low nibble."""
    flat = values.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int, signed: bool) -> np.ndarray:
    out = np.empty(packed.size * 2, dtype=np.uint8)
    out[0::2] = packed & 0x0F
    out[1::2] = packed >> 4
    out = out[:count]
    if signed:
        return ((out.astype(np.int16) ^ 8) - 8).astype(np.int8)
    return out


def pack(tensor: SourceTensor, scheme: TensorScheme) -> dict[str, np.ndarray]:
    """Arrays for ``tensor`` under ``scheme``, keyed like :func:`.weights.array_layout`."""
    raw = tensor.raw()
    check_finite(raw, tensor.name, dtype=tensor.dtype)
    if tensor.role.is_norm or scheme.mode == C.FP32:
        return {"weight": _to_float32(tensor, raw)}
    from phi_quant import quant as q

    if scheme.mode == C.FP16:
        if hasattr(q, "to_float16"):
            return {"weight": np.asarray(q.to_float16(raw, tensor.dtype))}
        return {"weight": _to_float32(tensor, raw).astype(np.float16)}  # round to nearest even, as the kernel
    n, k = raw.shape
    c = q.nncf_compress(raw, mode=scheme.mode, group_size=scheme.group_size, src_dtype=tensor.dtype)
    values, scale, zero = np.asarray(c.weight), np.asarray(c.scale), c.zero_point
    groups = k // scheme.group_size if scheme.group_size else 1
    out: dict[str, np.ndarray] = {}
    bits = C.BITS[scheme.mode]
    out["weight"] = pack_nibbles(values) if bits == 4 else values.reshape(-1).view(np.uint8)
    out["scale"] = scale.astype(np.float16).reshape(n, groups, 1) if scheme.group_size else scale.astype(np.float16).reshape(n, 1)
    if zero is not None:
        zero = np.asarray(zero)
        out["zero_point"] = pack_nibbles(zero) if bits == 4 else zero.reshape(-1).astype(np.uint8)
    return out


def dequantize(arrays: dict[str, np.ndarray], scheme: TensorScheme, shape: tuple[int, int]) -> np.ndarray:
    """float32 [N, K] of what the IR computes from ``arrays`` (Convert f16, Subtract, Multiply, Convert)."""
    if scheme.mode in (C.FP32, C.FP16):
        return arrays["weight"].astype(np.float32).reshape(shape)
    n, k = shape
    g = scheme.group_size or k
    signed = scheme.mode in (C.INT4_SYM, C.INT8_SYM)
    if C.BITS[scheme.mode] == 4:
        w = unpack_nibbles(arrays["weight"], n * k, signed)
    else:
        w = arrays["weight"].view(np.int8 if signed else np.uint8)
    w = w.reshape(n, k // g, g).astype(np.float16)
    if "zero_point" in arrays:
        zp = arrays["zero_point"]
        zp = unpack_nibbles(zp, n * (k // g), False) if C.BITS[scheme.mode] == 4 else zp
        w = w - zp.reshape(n, k // g, 1).astype(np.float16)
    w = w * arrays["scale"].reshape(n, k // g, 1)
    return w.reshape(n, k).astype(np.float32)
