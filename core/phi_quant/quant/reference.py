"""The numpy specification of every quantization scheme phi-quant writes.

Each function here is the readable statement of one vendor's rules (what the vendor's own
quantizer computes, operation by operation, in float32), so that:

- the C kernel (``phi_quant/kernels``) is tested against it bit for bit, and
- :mod:`phi_quant.quant` falls back to it when the compiled module is missing.

Inputs are 2-D ``[N, K]`` arrays already decoded to float32 (:func:`decode`); blocks run along K.
Rounding helpers name the C function they imitate (``roundf``: half away from zero; ``rint``:
half to even). Every intermediate stays float32, as in the vendors' C code.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32

# ggml block layouts: elements per block, bytes per block.
GGML_BLOCKS = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q8_0": (32, 34)}


# --------------------------------------------------------------------------- dtypes


def decode(raw: np.ndarray, src_dtype: str) -> np.ndarray:
    """float32 values of a stored array (bf16 arrives as uint16 bit patterns)."""
    if src_dtype == "f32":
        return np.asarray(raw, dtype=F32)
    if src_dtype == "f16":
        return np.asarray(raw).view(np.float16).astype(F32)
    if src_dtype == "bf16":
        return (np.asarray(raw).view(np.uint16).astype(np.uint32) << 16).view(F32)
    raise ValueError(f"unknown source dtype {src_dtype!r}")


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns of float32 values, round to nearest even (NaN stays a quiet NaN)."""
    bits = np.ascontiguousarray(x, dtype=F32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    out = np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x0040), rounded)
    return out.astype(np.uint16)


def store_scale(x: np.ndarray, scale_dtype: str) -> np.ndarray:
    """Round float32 scales to the stored type: float32, float16 (RNE) or bf16 bits (uint16)."""
    x = np.asarray(x, dtype=F32)
    if scale_dtype == "f32":
        return x
    if scale_dtype == "f16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16)
    if scale_dtype == "bf16":
        return f32_to_bf16_bits(x)
    raise ValueError(f"unknown scale dtype {scale_dtype!r}")


def stored_to_f32(x: np.ndarray, scale_dtype: str) -> np.ndarray:
    """float32 value of a stored scale (the inverse of :func:`store_scale`, exact)."""
    return decode(x, scale_dtype)


# --------------------------------------------------------------------------- rounding


def roundf(v: np.ndarray) -> np.ndarray:
    """C ``roundf``: nearest integer, halves away from zero (exact in float32)."""
    a = np.abs(v)
    f = np.floor(a)
    with np.errstate(invalid="ignore"):
        r = f + (a - f >= F32(0.5)).astype(F32)
    return np.copysign(r, v).astype(F32)


def rint(v: np.ndarray) -> np.ndarray:
    """C ``rint`` in the default rounding mode: nearest integer, halves to even."""
    return np.rint(v).astype(F32)


def _nan_to_zero(v: np.ndarray) -> np.ndarray:
    # Where a vendor's C code casts NaN to an integer (a zero scale's reciprocal times 0 cannot
    # happen, but an overflowing 1/scale can), x86 gives 0; both our sides pin that choice.
    return np.where(np.isnan(v), F32(0), v)


def _first(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The first element of each block equal to ``target`` (keepdims): C's ``if (v < min) min = v``
    scan keeps the first of equal values, which matters only for -0.0 versus +0.0."""
    return np.take_along_axis(x, np.argmax(x == target, axis=-1)[..., None], axis=-1)


def block_min(x: np.ndarray) -> np.ndarray:
    return _first(x, x.min(axis=-1, keepdims=True))


def block_max(x: np.ndarray) -> np.ndarray:
    return _first(x, x.max(axis=-1, keepdims=True))


def _blocks(w: np.ndarray, size: int) -> np.ndarray:
    n, k = w.shape
    return w.reshape(n, k // size, size)


# --------------------------------------------------------------------------- ggml


def ggml_q8_0_values(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
    """``quantize_row_q8_0_ref``'s choice: int8 codes [N, K] and float32 d [N, K/32] (d = amax/127)."""
    x = _blocks(w, 32)
    amax = np.abs(x).max(axis=-1, keepdims=True)
    d = amax / F32(127)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(d == 0, F32(0), F32(1) / np.where(d == 0, F32(1), d)).astype(F32)
    with np.errstate(invalid="ignore"):
        v = x * inv
    a = np.abs(v)
    r = roundf(np.where(a < F32(2**30), a, F32(0)))  # a non-finite product (1/d overflowed) gives 0
    q = np.where(v < 0, -r, r).astype(np.int8)
    return q.reshape(w.shape), d[..., 0], None


def _split_half_nibbles(q: np.ndarray) -> np.ndarray:
    """ggml nibble order: element j in the low nibble of byte j, element j+16 in its high nibble."""
    return (q[..., :16] | (q[..., 16:] << np.uint8(4))).astype(np.uint8)


def _trunc_to_nibble(v: np.ndarray) -> np.ndarray:
    """``MIN(15, (int8_t)v)`` for the non-negative ``v`` ggml produces; NaN/Inf give 0 (as on x86)."""
    v = np.where(v < F32(2**30), v, F32(0))
    return np.trunc(np.clip(v, F32(0), F32(15))).astype(np.uint8)


def ggml_q4_0_values(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
    """``quantize_row_q4_0_ref``'s choice: nibble codes [N, K] (value q-8) and d [N, K/32] =
    (signed value of the largest |x|, first wins) / -8."""
    x = _blocks(w, 32)
    imax = np.abs(x).argmax(axis=-1)[..., None]
    mx = np.take_along_axis(x, imax, axis=-1)
    mx = np.where(np.abs(mx) == 0, F32(0), mx)  # an all-zero block keeps ggml's initial +0
    d = mx / F32(-8)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(d == 0, F32(0), F32(1) / np.where(d == 0, F32(1), d)).astype(F32)
    with np.errstate(invalid="ignore"):
        q = _trunc_to_nibble(x * inv + F32(8.5))
    return q.reshape(w.shape), d[..., 0], None


def ggml_q4_1_values(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``quantize_row_q4_1_ref``'s choice: nibble codes [N, K], d = (max-min)/15 and m = min [N, K/32]."""
    x = _blocks(w, 32)
    mn = block_min(x)
    mx = block_max(x)
    with np.errstate(over="ignore", invalid="ignore"):
        d = (mx - mn) / F32(15)
        inv = np.where(d == 0, F32(0), F32(1) / np.where(d == 0, F32(1), d)).astype(F32)
        q = _trunc_to_nibble((x - mn) * inv + F32(0.5))
    return q.reshape(w.shape), d[..., 0], mn[..., 0]


def ggml_values(w: np.ndarray, scheme: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Round-to-nearest values of a ggml block type: (codes, d, m or None)."""
    return {"Q8_0": ggml_q8_0_values, "Q4_0": ggml_q4_0_values, "Q4_1": ggml_q4_1_values}[scheme](w)


def ggml_pack(codes: np.ndarray, d: np.ndarray, m: np.ndarray | None, scheme: str) -> np.ndarray:
    """ggml blocks from values: per block the fp16 d (Q4_1: then the fp16 m), then the quants
    (Q8_0: int8; 4-bit: split-half nibbles) -> uint8 [N, K/32*bytes]."""
    n, k = codes.shape
    head = store_scale(np.asarray(d, F32).reshape(n, k // 32, 1), "f16").view(np.uint8)
    if scheme == "Q4_1":
        head = np.concatenate([head, store_scale(np.asarray(m, F32).reshape(n, k // 32, 1), "f16").view(np.uint8)], axis=-1)
    q = _blocks(np.ascontiguousarray(codes), 32)
    body = q.view(np.uint8) if scheme == "Q8_0" else _split_half_nibbles(q.astype(np.uint8))
    return np.concatenate([head, body], axis=-1).reshape(n, -1)


def ggml_q8_0(w: np.ndarray) -> np.ndarray:
    """ggml ``quantize_row_q8_0_ref``: blocks of 32 as ``half d; int8 qs[32]`` -> uint8 [N, K/32*34]."""
    return ggml_pack(*ggml_q8_0_values(w), "Q8_0")


def ggml_q4_0(w: np.ndarray) -> np.ndarray:
    """ggml ``quantize_row_q4_0_ref``: ``half d; u8 qs[16]``, d = (signed value of max |x|, first wins)/-8."""
    return ggml_pack(*ggml_q4_0_values(w), "Q4_0")


def ggml_q4_1(w: np.ndarray) -> np.ndarray:
    """ggml ``quantize_row_q4_1_ref``: ``half d; half m; u8 qs[16]``, d = (max-min)/15, m = min."""
    return ggml_pack(*ggml_q4_1_values(w), "Q4_1")


def ggml_dequantize(blocks: np.ndarray, scheme: str, k: int) -> np.ndarray:
    """float32 [N, K] from ggml block bytes (uint8 [N, K/32*bytes])."""
    size, nbytes = GGML_BLOCKS[scheme]
    b = np.asarray(blocks, dtype=np.uint8).reshape(-1, k // size, nbytes)
    d = b[..., 0:2].copy().view(np.float16).astype(F32)
    if scheme == "Q8_0":
        q = b[..., 2:].view(np.int8).astype(F32)
        return (q * d).reshape(-1, k)
    qs = b[..., nbytes - 16 :]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(F32)
    if scheme == "Q4_0":
        return ((q - F32(8)) * d).reshape(-1, k)
    m = b[..., 2:4].copy().view(np.float16).astype(F32)
    return (q * d + m).reshape(-1, k)


# --------------------------------------------------------------------------- ONNX Runtime MatMulNBits


def matmulnbits_values(
    w: np.ndarray, bits: int, block_size: int, symmetric: bool, scale_dtype: str = "f32"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MLAS ``BlockwiseQuantizer``'s choice for row-major [N, K]: codes uint8 [N, K], float32
    scales [N, k_blocks] (before rounding to ``scale_dtype``; the codes use the stored scale) and
    int32 zero points [N, k_blocks] (None when symmetric). A partial last block takes its
    min/max from the elements that exist."""
    n, k = w.shape
    kb = -(-k // block_size)
    qmax = (1 << bits) - 1
    mid = 1 << (bits - 1)
    pad = kb * block_size - k
    x = np.pad(w, ((0, 0), (0, pad))).reshape(n, kb, block_size)
    valid = (np.arange(kb * block_size) < k).reshape(kb, block_size)
    mn = block_min(np.where(valid, x, F32(np.inf)))[..., 0]
    mx = block_max(np.where(valid, x, F32(-np.inf)))[..., 0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if symmetric:
            extreme = np.where(np.abs(mx) > np.abs(mn), mx, mn)
            scale_f = (extreme / F32(-mid)).astype(F32)
            zp = None
            z = np.full((n, kb), mid, dtype=np.int32)
        else:
            mn0 = np.minimum(mn, F32(0))
            mx0 = np.maximum(mx, F32(0))
            scale_f = ((mx0 - mn0) / F32(qmax)).astype(F32)
            zfp = np.where(scale_f != 0, F32(0) - mn0 / np.where(scale_f != 0, scale_f, F32(1)), mn0).astype(F32)
            zp = z = np.where(zfp < 0, 0, np.where(zfp > qmax, qmax, roundf(np.clip(zfp, 0, qmax)))).astype(np.int32)
        s = stored_to_f32(store_scale(scale_f, scale_dtype), scale_dtype)
        inv = np.where(s != 0, F32(1) / np.where(s != 0, s, F32(1)), F32(0)).astype(F32)
        v = x * inv[..., None] + z[..., None].astype(F32)
    q = np.clip(_nan_to_zero(roundf(v)), 0, qmax).astype(np.uint8)
    return np.ascontiguousarray(q.reshape(n, -1)[:, :k]), scale_f, zp


def matmulnbits_pack(
    codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int, block_size: int,
    scale_dtype: str = "f32",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits inputs from values: B uint8 [N, k_blocks, block_size*bits/8] (zero bytes past K;
    4-bit: first element in the low nibble), scales in ``scale_dtype``, zero points uint8
    [N, ceil(k_blocks*bits/8)] (4-bit: even block in the low nibble, an unused nibble is 8)."""
    n, k = codes.shape
    kb = -(-k // block_size)
    q = np.zeros((n, kb * block_size), np.uint8)
    q[:, :k] = codes
    q = q.reshape(n, kb, block_size)
    if bits == 4:
        q = (q[..., 0::2] | (q[..., 1::2] << np.uint8(4))).astype(np.uint8)
    zero_points_out = None
    if zero_points is not None:
        z = np.asarray(zero_points).astype(np.uint8)
        if bits == 4:
            if kb % 2:
                z = np.concatenate([z, np.full((n, 1), 8, np.uint8)], axis=1)
            z = (z[:, 0::2] | (z[:, 1::2] << np.uint8(4))).astype(np.uint8)
        zero_points_out = z
    return q, store_scale(scales, scale_dtype), zero_points_out


def matmulnbits(
    w: np.ndarray, bits: int, block_size: int, symmetric: bool, scale_dtype: str = "f32"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MLAS ``BlockwiseQuantizer`` (what ``quantize_matmul_{4,8}bits`` produce), for row-major [N, K].

    Returns B uint8 [N, k_blocks, block_size*bits/8], scales [N, k_blocks] in ``scale_dtype``
    and zero points uint8 [N, ceil(k_blocks*bits/8)] (None when symmetric). K is padded to whole
    blocks: padded elements are zero bytes and take no part in min/max; an unused zero-point nibble is 8.
    """
    codes, scales, zp = matmulnbits_values(w, bits, block_size, symmetric, scale_dtype)
    return matmulnbits_pack(codes, scales, zp, bits, block_size, scale_dtype)


def matmulnbits_dequantize(
    B: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int, block_size: int, k: int,
    scale_dtype: str = "f32",
) -> np.ndarray:
    """float32 [N, K] from MatMulNBits B/scales/zero points (what the op computes before the matmul)."""
    B = np.asarray(B, dtype=np.uint8)
    n = B.shape[0]
    kb = -(-k // block_size)
    B = B.reshape(n, kb, -1)
    q = np.stack([B & 0x0F, B >> 4], axis=-1).reshape(n, kb, block_size) if bits == 4 else B
    if zero_points is None:
        zp = np.full((n, kb), 1 << (bits - 1), np.float32)
    else:
        z = np.asarray(zero_points, dtype=np.uint8).reshape(n, -1)
        zp = (np.stack([z & 0x0F, z >> 4], axis=-1).reshape(n, -1)[:, :kb] if bits == 4 else z[:, :kb]).astype(F32)
    s = stored_to_f32(np.asarray(scales).reshape(n, kb), scale_dtype)
    out = (q.astype(F32) - zp[..., None]) * s[..., None]
    return out.reshape(n, kb * block_size)[:, :k]


# --------------------------------------------------------------------------- MLX


def mlx_affine_values(w: np.ndarray, bits: int, group_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mx.quantize``'s choice (affine mode): codes uint8 [N, K], float32 scales and biases [N, K/group].

    scale = max((max-min)/(2^b-1), 1e-7), negated unless |min| > |max|; the edge (min or max)
    is snapped to the grid so zero is exact: q0 = rint(edge/scale), and if q0 != 0 then
    scale = edge/q0, bias = edge. q = clamp(rint((w-bias)/scale)).
    """
    n, k = w.shape
    x = _blocks(w, group_size)
    nbins = F32((1 << bits) - 1)
    mn = block_min(x)
    mx = block_max(x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mask = np.abs(mn) > np.abs(mx)
        scale = np.maximum((mx - mn) / nbins, F32(1e-7)).astype(F32)
        scale = np.where(mask, scale, -scale)
        edge = np.where(mask, mn, mx)
        q0 = rint(edge / scale)
        nz = q0 != 0
        scale = np.where(nz, edge / np.where(nz, q0, F32(1)), scale).astype(F32)
        bias = np.where(nz, edge, F32(0)).astype(F32)
        q = np.clip(_nan_to_zero(rint((x - bias) / scale)), F32(0), nbins).astype(np.uint8)
    return q.reshape(n, k), scale[..., 0], bias[..., 0]


def mlx_pack(codes: np.ndarray, scales: np.ndarray, biases: np.ndarray, bits: int,
             scale_dtype: str = "f32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mlx-lm's arrays from values: uint32 words (element j of a word at bit j*bits), scales and
    biases stored in ``scale_dtype``."""
    n, k = codes.shape
    per_word = 32 // bits
    q = np.asarray(codes).astype(np.uint32).reshape(n, k // per_word, per_word)
    shifts = (np.arange(per_word, dtype=np.uint32) * np.uint32(bits))
    words = np.bitwise_or.reduce(q << shifts, axis=-1).astype(np.uint32)
    return words, store_scale(scales, scale_dtype), store_scale(biases, scale_dtype)


def mlx_affine(w: np.ndarray, bits: int, group_size: int, scale_dtype: str = "f32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mx.quantize`` (affine mode): uint32 words, element j of a word at bit j*bits; scales, biases.

    Scales and biases are stored in ``scale_dtype`` (mlx uses the input's dtype) but quantization
    uses the float32 values (:func:`mlx_affine_values`).
    """
    return mlx_pack(*mlx_affine_values(w, bits, group_size), bits, scale_dtype)


def mlx_dequantize(wq: np.ndarray, scales: np.ndarray, biases: np.ndarray, bits: int, group_size: int,
                   scale_dtype: str = "f32") -> np.ndarray:
    """float32 [N, K] = scale * q + bias per group (what ``mx.dequantize`` computes)."""
    wq = np.asarray(wq, dtype=np.uint32)
    n = wq.shape[0]
    per_word = 32 // bits
    shifts = np.arange(per_word, dtype=np.uint32) * np.uint32(bits)
    q = ((wq[..., None] >> shifts) & np.uint32((1 << bits) - 1)).reshape(n, -1).astype(F32)
    k = q.shape[1]
    s = stored_to_f32(np.asarray(scales), scale_dtype).reshape(n, k // group_size, 1)
    b = stored_to_f32(np.asarray(biases), scale_dtype).reshape(n, k // group_size, 1)
    return (q.reshape(n, k // group_size, group_size) * s + b).reshape(n, k)


# --------------------------------------------------------------------------- NNCF / OpenVINO

NNCF_MODES = {"int4_sym": (4, True), "int4_asym": (4, False), "int8_sym": (8, True), "int8_asym": (8, False)}


def nncf(w: np.ndarray, mode: str, group_size: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """NNCF ``do_integer_quantization`` for a [N, K] weight reduced along K.

    Returns q (int8 values for *_sym, uint8 for *_asym) [N, G, gs] (or [N, K] per channel),
    float32 scale [N, G, 1] (or [N, 1]) and int32 zero point of the scale's shape (None for sym).
    Asymmetric: the range is widened to include 0, scale = (max-min)/(2^b-1) (eps floor),
    zp = clip(-rint(min/scale)), q = clip(rint(w/scale + zp)). Symmetric: scale = |min|/2^(b-1)
    when |min| >= max, else -max/2^(b-1) (eps floor on |scale|); q = clip(rint(w/scale)).
    """
    bits, sym = NNCF_MODES[mode]
    n, k = w.shape
    x = w if group_size is None else w.reshape(n, k // group_size, group_size)
    eps = F32(np.finfo(F32).eps)
    mn = block_min(x)
    mx = block_max(x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if sym:
            factor = F32(1 << (bits - 1))
            amin = np.abs(mn)
            scale = (np.where(amin >= mx, amin, -mx) / factor).astype(F32)
            scale = np.where(np.abs(scale) < eps, eps, scale).astype(F32)
            q = np.clip(_nan_to_zero(rint(x / scale)), -factor, factor - 1).astype(np.int8)
            return q, scale, None
        mn0 = np.minimum(mn, F32(0))
        mx0 = np.maximum(mx, F32(0))
        qmax = (1 << bits) - 1
        scale = ((mx0 - mn0) / F32(qmax)).astype(F32)
        scale = np.where(np.abs(scale) < eps, eps, scale).astype(F32)
        zp = np.clip((F32(0) - rint(mn0 / scale)).astype(np.int32), 0, qmax).astype(np.int32)
        q = np.clip(_nan_to_zero(rint(x / scale + zp.astype(F32))), 0, qmax).astype(np.uint8)
    return q, scale, zp


def nncf_dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    """float32 weights back, in q's shape: (q - zp) * scale (scale as stored, e.g. float16)."""
    v = q.astype(np.int32) - (zero_point.astype(np.int32) if zero_point is not None else 0)
    return (v.astype(F32) * np.asarray(scale).astype(F32)).astype(F32)


def nncf_pack(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, bits: int,
              scale_dtype: str = "f16") -> dict[str, np.ndarray]:
    """The OpenVINO constants of an NNCF-compressed weight from values: ``weight`` (4-bit: u4/i4
    nibbles, element 2i in the low nibble of byte i over the flat row-major order; 8-bit: the
    int8/uint8 bytes in q's shape), ``scale`` in ``scale_dtype`` and ``zero_point`` (u4 nibbles or
    uint8) when asymmetric."""
    out = {
        "weight": pack_u4(q) if bits == 4 else np.ascontiguousarray(q).view(np.uint8),
        "scale": store_scale(scale, scale_dtype),
    }
    if zero_point is not None:
        out["zero_point"] = pack_u4(zero_point) if bits == 4 else np.ascontiguousarray(zero_point, dtype=np.uint8)
    return out


def pack_u4(q: np.ndarray) -> np.ndarray:
    """OpenVINO u4/i4 byte layout: element 2i in the low nibble of byte i, 2i+1 in the high nibble."""
    a = np.asarray(q)
    if a.dtype not in (np.int8, np.uint8):
        a = a.astype(np.int16).astype(np.int8) if a.dtype.kind == "i" else a.astype(np.uint8)
    flat = np.ascontiguousarray(a).view(np.uint8).reshape(-1)  # two's complement: low 4 bits are the i4
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    pairs = flat.reshape(-1, 2)
    return (pairs[:, 0] & np.uint8(0x0F)) | (pairs[:, 1] << np.uint8(4))


def unpack_u4(packed: np.ndarray, count: int, signed: bool = False) -> np.ndarray:
    """Values from :func:`pack_u4` bytes (int8 with sign extension when ``signed``)."""
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    v = np.stack([p & 0x0F, p >> 4], axis=-1).reshape(-1)[:count]
    if signed:
        return ((v.astype(np.int16) ^ 8) - 8).astype(np.int8)
    return v
