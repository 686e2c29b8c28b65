"""Values (codes, scales, zeros) and the bytes they pack into, for every kernel layout.

The kernel's work is split in two: a *rule* chooses the values of a tensor (the vendors'
round-to-nearest rule lives in :mod:`.reference`; other recipes in :mod:`.recipes`), and
:func:`pack` writes any values in the format's bytes. :func:`quantize` is the fused
round-to-nearest fast path; ``tests/test_pack.py`` proves ``pack(rtn_values(w)) == quantize(w)``
bit for bit for every layout.

Arrays are named as the backends store them:

==============  ==========================================================================
layout          arrays
==============  ==========================================================================
float           ``weight`` (float32, float16, or bf16 as uint16)
ggml            ``blocks`` uint8 [N, K/32*block_bytes]
matmulnbits     ``B`` uint8 [N, k_blocks, blob], ``scales`` [N, k_blocks], ``zero_points``
mlx             ``weight`` uint32 [N, K*bits/32], ``scales``, ``biases`` [N, K/group]
nncf            ``weight`` (4-bit: flat u4/i4 bytes; 8-bit: int8/uint8 bytes), ``scale`` f16
                [N, G, 1] (or [N, 1] per channel), ``zero_point`` (asymmetric)
==============  ==========================================================================
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from phi_quant.quant import _checks, _native, reference
from phi_quant.quant.scheme import FLOAT, GGML, MATMULNBITS, MLX, NNCF, ZERO_INT, ZERO_OFFSET, Scheme

__all__ = ["QuantValues", "rtn_values", "pack", "quantize", "dequantize_values", "dequantize", "convert_float"]


class QuantValues(NamedTuple):
    """What a recipe chooses for a block of rows ``[n, K]`` under one :class:`Scheme`.

    ``codes``: [n, K], uint8 (int8 for signed code ranges: Q8_0, symmetric NNCF).
    ``scales``: float32 [n, groups]; stored with the format's rounding by :func:`pack`.
    ``zeros``: uint8 [n, groups] integer zero points (``zero_kind == "int"``), float32 offsets
    [n, groups] (``"offset"``: ggml Q4_1's m, mlx's bias), or None (``"fixed"``).
    """

    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None = None


def _nncf_mode(scheme: Scheme) -> str:
    return f"int{scheme.bits}_{'sym' if scheme.symmetric else 'asym'}"


def rtn_values(w: np.ndarray, scheme: Scheme) -> QuantValues:
    """The vendor's round-to-nearest values of float32 rows ``w`` [n, K] (numpy reference)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    n, k = w.shape
    if scheme.layout == GGML:
        return QuantValues(*reference.ggml_values(w, scheme.name))
    if scheme.layout == MATMULNBITS:
        codes, scales, zp = reference.matmulnbits_values(w, scheme.bits, scheme.group, scheme.symmetric, scheme.scale_dtype)
        return QuantValues(codes, scales, None if zp is None else zp.astype(np.uint8))
    if scheme.layout == MLX:
        return QuantValues(*reference.mlx_affine_values(w, scheme.bits, scheme.group))
    if scheme.layout == NNCF:
        q, scale, zp = reference.nncf(w, _nncf_mode(scheme), scheme.group)
        g = scheme.groups(k)
        return QuantValues(q.reshape(n, k), scale.reshape(n, g), None if zp is None else zp.reshape(n, g).astype(np.uint8))
    raise _checks.UnsupportedPrecisionError(f"{scheme.name}: no round-to-nearest rule in phi-quant's kernel")


def _nncf_shapes(scheme: Scheme, n: int, k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(weight shape for 8-bit data, scale/zero shape) as NNCF hands them to OpenVINO."""
    if scheme.group is None:
        return (n, k), (n, 1)
    return (n, k // scheme.group, scheme.group), (n, k // scheme.group, 1)


def pack(values: QuantValues, scheme: Scheme, *, threads: int | None = None, name: str = "tensor") -> dict[str, np.ndarray]:
    """The format's arrays for ``values`` (C kernel; numpy reference when it is not built)."""
    codes, scales, zeros = values
    n, k = codes.shape
    t = _checks.threads_of(threads)
    if scheme.layout == GGML:
        out = _native.ggml_pack(codes, scales, zeros, scheme.name, t, name)
        if out is None:
            out = reference.ggml_pack(codes, scales, zeros, scheme.name)
        return {"blocks": out}
    if scheme.layout == MATMULNBITS:
        res = _native.matmulnbits_pack(codes, scales, zeros, scheme.bits, scheme.group, scheme.scale_dtype, t, name)
        if res is None:
            res = reference.matmulnbits_pack(codes, scales, zeros, scheme.bits, scheme.group, scheme.scale_dtype)
        out = {"B": res[0], "scales": res[1]}
        if res[2] is not None:
            out["zero_points"] = res[2]
        return out
    if scheme.layout == MLX:
        res = _native.mlx_pack(codes, scales, zeros, scheme.bits, scheme.group, scheme.scale_dtype, t, name)
        if res is None:
            res = reference.mlx_pack(codes, scales, zeros, scheme.bits, scheme.scale_dtype)
        return {"weight": res[0], "scales": res[1], "biases": res[2]}
    if scheme.layout == NNCF:
        wshape, sshape = _nncf_shapes(scheme, n, k)
        g = scheme.group_of(k)
        res = _native.nncf_pack(codes, scales, zeros, scheme.bits, scheme.symmetric, g, scheme.scale_dtype, t, name)
        if res is None:
            zp = None if zeros is None else zeros.reshape(sshape)
            return reference.nncf_pack(codes.reshape(wshape), scales.reshape(sshape), zp, scheme.bits, scheme.scale_dtype)
        q, s, z = res
        out = {"weight": q if scheme.bits == 4 else q.reshape(wshape), "scale": s.reshape(sshape)}
        if z is not None:
            out["zero_point"] = z if scheme.bits == 4 else z.reshape(sshape)
        return out
    raise _checks.UnsupportedPrecisionError(f"{scheme.name}: phi-quant's kernel does not pack the {scheme.layout} layout")


def convert_float(raw: np.ndarray, src_dtype: str, dtype: str, *, threads: int | None = None,
                  name: str = "tensor") -> np.ndarray:
    """``raw`` in float ``dtype`` ("f32", "f16", "bf16" as uint16 bits), round to nearest even."""
    from phi_quant import quant as q

    if dtype == "f32":
        return q.to_float32(raw, src_dtype, name=name)
    if dtype == "f16":
        return q.to_float16(raw, src_dtype, threads=threads, name=name)
    return q.to_bfloat16(raw, src_dtype, threads=threads, name=name)


def quantize(raw: np.ndarray, src_dtype: str, scheme: Scheme, *, threads: int | None = None,
             name: str = "tensor") -> dict[str, np.ndarray]:
    """Round-to-nearest arrays of stored rows ``raw`` [n, K] in one fused kernel pass."""
    from phi_quant import quant as q

    if scheme.layout == FLOAT:
        return {"weight": convert_float(raw, src_dtype, scheme.scale_dtype, threads=threads, name=name)}
    if scheme.layout == GGML:
        return {"blocks": q.ggml_quantize(raw, scheme.name, src_dtype=src_dtype, threads=threads, name=name)}
    if scheme.layout == MATMULNBITS:
        B, scales, zp = q.matmulnbits_quantize(raw, scheme.bits, scheme.group, scheme.symmetric, src_dtype=src_dtype,
                                               scale_dtype=scheme.scale_dtype, threads=threads, name=name)
        return {"B": B, "scales": scales} | ({} if zp is None else {"zero_points": zp})
    if scheme.layout == MLX:
        wq, scales, biases = q.mlx_quantize(raw, scheme.bits, scheme.group, src_dtype=src_dtype,
                                            scale_dtype=scheme.scale_dtype, threads=threads, name=name)
        return {"weight": wq, "scales": scales, "biases": biases}
    if scheme.layout == NNCF:
        four = scheme.bits == 4  # 4-bit: the kernel writes the u4/i4 bytes in its quantizing pass
        c = q.nncf_compress(raw, _nncf_mode(scheme), scheme.group, src_dtype=src_dtype, scale_dtype=scheme.scale_dtype,
                            threads=threads, name=name, packed=four)
        out = {"weight": c.weight if four else np.ascontiguousarray(c.weight).view(np.uint8),
               "scale": np.ascontiguousarray(c.scale)}
        if c.zero_point is not None:
            out["zero_point"] = q.pack_4bit(c.zero_point) if four else np.ascontiguousarray(c.zero_point, dtype=np.uint8)
        return out
    raise _checks.UnsupportedPrecisionError(f"{scheme.name}: phi-quant's kernel does not write the {scheme.layout} layout")


def _stored(x: np.ndarray, dtype: str) -> np.ndarray:
    return reference.stored_to_f32(reference.store_scale(x, dtype), dtype)


def dequantize_values(values: QuantValues, scheme: Scheme) -> np.ndarray:
    """float32 [n, K] the runtime reconstructs from ``values`` (scales and offsets as stored)."""
    codes, scales, zeros = values
    n, k = codes.shape
    g = scheme.group_of(k)
    groups = scheme.groups(k)
    pad = groups * g - k
    q = codes.astype(np.float32)
    if pad:
        q = np.pad(q, ((0, 0), (0, pad)))
    q = q.reshape(n, groups, g)
    s = _stored(scales, scheme.scale_dtype).reshape(n, groups, 1)
    kind = scheme.zero_kind
    if kind == ZERO_OFFSET:
        out = q * s + _stored(zeros, scheme.scale_dtype).reshape(n, groups, 1)
    else:
        z = zeros.astype(np.float32).reshape(n, groups, 1) if kind == ZERO_INT else np.float32(scheme.fixed_zero())
        out = (q - z) * s
    return out.reshape(n, groups * g)[:, :k].astype(np.float32)


def dequantize(arrays: dict[str, np.ndarray], scheme: Scheme, shape: tuple[int, ...]) -> np.ndarray:
    """float32 of ``shape`` from the format's arrays (what the runtime computes)."""
    from phi_quant import quant as q

    n = 1
    for d in shape[:-1]:
        n *= d
    k = shape[-1]
    if scheme.layout == FLOAT:
        return q.to_float32(arrays["weight"], scheme.scale_dtype).reshape(shape)
    if scheme.layout == GGML:
        return q.ggml_dequantize(arrays["blocks"], scheme.name, k).reshape(shape)
    if scheme.layout == MATMULNBITS:
        return q.matmulnbits_dequantize(arrays["B"], arrays["scales"], arrays.get("zero_points"), bits=scheme.bits,
                                        block_size=scheme.group, k=k).reshape(shape)
    if scheme.layout == MLX:
        return q.mlx_dequantize(arrays["weight"], arrays["scales"], arrays["biases"], bits=scheme.bits,
                                group_size=scheme.group, scale_dtype=scheme.scale_dtype).reshape(shape)
    if scheme.layout == NNCF:
        g = scheme.group_of(k)
        signed = scheme.symmetric
        if scheme.bits == 4:
            w = q.unpack_4bit(arrays["weight"], n * k, signed=signed)
        else:
            w = np.asarray(arrays["weight"]).view(np.int8 if signed else np.uint8)
        w = w.reshape(n, k // g, g).astype(np.float32)
        if "zero_point" in arrays:
            zp = arrays["zero_point"]
            zp = q.unpack_4bit(zp, n * (k // g)) if scheme.bits == 4 else np.asarray(zp)
            w = w - zp.reshape(n, k // g, 1).astype(np.float32)
        scale = reference.stored_to_f32(np.asarray(arrays["scale"]), scheme.scale_dtype)
        return (w * scale.reshape(n, k // g, 1)).reshape(shape)
    raise _checks.UnsupportedPrecisionError(f"{scheme.name}: cannot dequantize the {scheme.layout} layout here")
