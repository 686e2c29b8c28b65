"""Quantization schemes: the Python face of phi-quant's C kernel.

Every quantizer takes the raw 2-D ``[N, K]`` weight exactly as :meth:`SourceTensor.raw` returns
it (a memory-mapped view in the stored dtype; bf16 as uint16 with ``src_dtype="bf16"``) and
returns arrays already laid out as the target format stores them. Blocks run along K, the input
dimension. The results are bit-identical to each vendor's own quantizer (gguf / ggml,
onnxruntime's MatMulNBits quantizer, ``mx.quantize``, NNCF); :mod:`.reference` is the numpy
specification the C code is tested against.

Common keyword arguments:

``src_dtype``
    ``"f32"``, ``"f16"`` or ``"bf16"`` (inferred for float32/float16 arrays).
``threads``
    worker threads (default: ``$PHI_QUANT_THREADS`` or all usable CPUs). Results do not depend on it.
``name``
    the tensor's name, used in error messages (:class:`~phi_quant.errors.BadWeightsError` for
    NaN/Inf, :class:`~phi_quant.errors.UnsupportedPrecisionError` for a shape the format cannot hold).

When the compiled module ``phi_quant._kernel`` is missing (a source checkout that was never
built), the numpy reference runs instead, with a :class:`KernelFallbackWarning`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from phi_quant.quant import _checks, _native, reference
from phi_quant.quant._native import KernelFallbackWarning, native_available

__all__ = [
    "GGML_SCHEMES",
    "MATMULNBITS_BLOCK_SIZES",
    "MLX_GROUP_SIZES",
    "NNCF_MODES",
    "NNCF_GROUP_SIZES",
    "KernelFallbackWarning",
    "NNCFWeight",
    "native_available",
    "to_float32",
    "to_float16",
    "to_bfloat16",
    "ggml_quantize",
    "ggml_dequantize",
    "ggml_row_bytes",
    "matmulnbits_quantize",
    "matmulnbits_dequantize",
    "mlx_quantize",
    "mlx_dequantize",
    "nncf_compress",
    "nncf_dequantize",
    "pack_4bit",
    "unpack_4bit",
]

#: ggml block types made here: name -> (elements per block, bytes per block).
GGML_SCHEMES = dict(reference.GGML_BLOCKS)
#: MatMulNBits block sizes (the op takes any power of two >= 16; we offer up to 256).
MATMULNBITS_BLOCK_SIZES = (16, 32, 64, 128, 256)
#: Group sizes ``mx.quantize`` accepts.
MLX_GROUP_SIZES = (32, 64, 128)
#: NNCF integer modes -> (bits, symmetric).
NNCF_MODES = dict(reference.NNCF_MODES)
#: NNCF group sizes offered here (``None`` means one group per output channel).
NNCF_GROUP_SIZES = (16, 32, 64, 128, 256)


# --------------------------------------------------------------------------- plain dtypes


def to_float32(w: np.ndarray, src_dtype: str | None = None, *, name: str = "tensor") -> np.ndarray:
    """float32 copy of a stored tensor (any shape; exact for every source dtype)."""
    w, src = _checks.any_array(w, src_dtype, name)
    return np.array(reference.decode(w, src), dtype=np.float32, copy=True)


def to_float16(w: np.ndarray, src_dtype: str | None = None, *, threads: int | None = None,
               name: str = "tensor") -> np.ndarray:
    """float16 array (IEEE round to nearest even; beyond ±65504 becomes ±inf, as numpy does).

    Callers that must refuse overflow check ``np.isfinite`` on the result.
    """
    w, src = _checks.any_array(w, src_dtype, name)
    if src == "f16":
        return np.array(w.view(np.float16), copy=True)
    out = _native.convert(w, src, "f16", _checks.threads_of(threads))
    if out is not None:
        return out.view(np.float16)
    with np.errstate(over="ignore"):
        return reference.decode(w, src).astype(np.float16)


def to_bfloat16(w: np.ndarray, src_dtype: str | None = None, *, threads: int | None = None,
                name: str = "tensor") -> np.ndarray:
    """bfloat16 bit patterns (uint16), round to nearest even, as torch/safetensors store bf16."""
    w, src = _checks.any_array(w, src_dtype, name)
    if src == "bf16":
        return np.array(w.view(np.uint16), copy=True)
    out = _native.convert(w, src, "bf16", _checks.threads_of(threads))
    if out is not None:
        return out
    return reference.f32_to_bf16_bits(reference.decode(w, src))


# --------------------------------------------------------------------------- ggml


def ggml_row_bytes(scheme: str, k: int) -> int:
    """Bytes one row of K elements takes in a ggml block type."""
    size, nbytes = GGML_SCHEMES[scheme]
    return k // size * nbytes


def ggml_quantize(w: np.ndarray, scheme: str, *, src_dtype: str | None = None, threads: int | None = None,
                  name: str = "tensor") -> np.ndarray:
    """ggml Q4_0 / Q4_1 / Q8_0 blocks, bit-identical to ggml's ``quantize_row_*_ref``.

    :returns: uint8 ``[N, K/32 * block_bytes]``: per block an IEEE fp16 scale ``d`` (Q4_1 then
        the fp16 minimum ``m``) followed by the quants; 4-bit blocks put element j in the low
        nibble of byte j and element j+16 in its high nibble.
    :raises UnsupportedPrecisionError: K is not a multiple of 32 (ggml cannot pad a row).
    """
    if scheme not in GGML_SCHEMES:
        raise _checks.UnsupportedPrecisionError(f"ggml scheme must be one of {tuple(GGML_SCHEMES)}, got {scheme!r}")
    w, src = _checks.weight_2d(w, src_dtype, name)
    _checks.divides(w.shape[1], 32, name, "ggml", "keep this tensor in F16/F32 or pick another type")
    out = _native.ggml(w, src, scheme, _checks.threads_of(threads), name)
    if out is None:
        out = reference.__dict__["ggml_" + scheme.lower()](_finite(w, src, name))
        heads = out.reshape(w.shape[0], -1, GGML_SCHEMES[scheme][1])[..., : 4 if scheme == "Q4_1" else 2]
        _no_inf_scales(heads.copy().view(np.float16), name, "f16", "ggml")  # d (and Q4_1's m)
    return out


def ggml_dequantize(blocks: np.ndarray, scheme: str, k: int) -> np.ndarray:
    """float32 ``[N, K]`` from :func:`ggml_quantize` bytes (what ggml's ``dequantize_row_*`` gives)."""
    if scheme not in GGML_SCHEMES:
        raise _checks.UnsupportedPrecisionError(f"unknown ggml scheme {scheme!r}")
    return reference.ggml_dequantize(blocks, scheme, k)


# --------------------------------------------------------------------------- ONNX Runtime


def matmulnbits_quantize(w: np.ndarray, bits: int = 4, block_size: int = 32, symmetric: bool = False, *,
                         src_dtype: str | None = None, scale_dtype: str = "f32", threads: int | None = None,
                         name: str = "tensor") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``com.microsoft.MatMulNBits`` inputs B, scales, zero_points, bit-identical to onnxruntime's
    ``quantize_matmul_4bits`` / ``quantize_matmul_8bits`` (given the same weight as [K, N]).

    Asymmetric: range widened to include 0, scale = (max-min)/(2^b-1), zp = roundf(-min/scale);
    symmetric: scale = signed extreme / -2^(b-1), implicit zero point 2^(b-1). Quants are
    clamp(roundf(x * (1/scale) + zp)) with the scale as stored (``scale_dtype`` "f32" or "f16",
    the model's activation type). K need not be a multiple of ``block_size``: the last block is
    padded with zero bytes, as the runtime expects.

    :returns: ``B`` uint8 ``[N, k_blocks, block_size*bits/8]`` (4-bit: first element in the low
        nibble), ``scales`` ``[N, k_blocks]`` float32/float16, ``zero_points`` uint8
        ``[N, ceil(k_blocks*bits/8)]`` (4-bit: even block in the low nibble) or ``None`` when symmetric.
    """
    bits = _checks.bits_of(bits, "MatMulNBits")
    block_size = _checks.group_size(block_size, MATMULNBITS_BLOCK_SIZES, "MatMulNBits block")
    sdt = _checks.dtype_name(scale_dtype, "scale_dtype")
    if sdt == "bf16":
        raise _checks.UnsupportedPrecisionError("MatMulNBits scales are float32 or float16, not bf16")
    w, src = _checks.weight_2d(w, src_dtype, name)
    res = _native.matmulnbits(w, src, bits, block_size, bool(symmetric), sdt, _checks.threads_of(threads), name)
    if res is None:
        res = reference.matmulnbits(_finite(w, src, name), bits, block_size, bool(symmetric), sdt)
        _no_inf_scales(res[1], name, sdt, "MatMulNBits")
    return res


def matmulnbits_dequantize(B: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, *, bits: int,
                           block_size: int, k: int) -> np.ndarray:
    """float32 ``[N, K]`` from MatMulNBits inputs, as the op dequantizes them."""
    sdt = "f16" if np.asarray(scales).dtype == np.float16 else "f32"
    return reference.matmulnbits_dequantize(B, np.asarray(scales), zero_points, bits, block_size, k, sdt)


# --------------------------------------------------------------------------- MLX


def mlx_quantize(w: np.ndarray, bits: int = 4, group_size: int = 64, *, src_dtype: str | None = None,
                 scale_dtype: str | None = None, threads: int | None = None,
                 name: str = "tensor") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mlx affine quantization, bit-identical to ``mx.quantize(w, group_size, bits)``.

    :returns: ``wq`` uint32 ``[N, K*bits/32]`` (element j of a word at bit j*bits), ``scales``
        and ``biases`` ``[N, K/group_size]`` in ``scale_dtype`` (default: the source dtype, as mlx
        does; bf16 as uint16 bit patterns).
    :raises UnsupportedPrecisionError: K is not a multiple of ``group_size`` (mlx cannot pad).
    """
    bits = _checks.bits_of(bits, "MLX")
    group_size = _checks.group_size(group_size, MLX_GROUP_SIZES, "MLX")
    w, src = _checks.weight_2d(w, src_dtype, name)
    sdt = _checks.dtype_name(scale_dtype, "scale_dtype") if scale_dtype else src
    _checks.divides(w.shape[1], group_size, name, "MLX", "choose a group size that divides K or keep the layer unquantized")
    res = _native.mlx(w, src, bits, group_size, sdt, _checks.threads_of(threads), name)
    if res is None:
        res = reference.mlx_affine(_finite(w, src, name), bits, group_size, sdt)
        _no_inf_scales(res[1], name, sdt, "MLX")
        _no_inf_scales(res[2], name, sdt, "MLX")  # the bias is a weight value: it must fit too
    return res


def mlx_dequantize(wq: np.ndarray, scales: np.ndarray, biases: np.ndarray, *, bits: int, group_size: int,
                   scale_dtype: str | None = None, src_dtype: str | None = None) -> np.ndarray:
    """float32 ``[N, K]`` = scale*q + bias (``mx.dequantize``). The scale dtype is taken from
    ``scale_dtype`` (``src_dtype`` is accepted as its alias) or from the scales' numpy dtype."""
    given = scale_dtype or src_dtype
    sdt = _checks.dtype_name(given, "scale_dtype") if given else {
        np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.uint16): "bf16"}[np.asarray(scales).dtype]
    return reference.mlx_dequantize(wq, scales, biases, bits, group_size, sdt)


# --------------------------------------------------------------------------- NNCF / OpenVINO


class NNCFWeight(NamedTuple):
    """One NNCF-compressed weight, shaped as NNCF hands it to OpenVINO.

    ``weight``: int8 values (``*_sym``, for an i4/i8 Constant) or uint8 (``*_asym``, u4/u8),
    ``[N, K/gs, gs]`` when grouped, ``[N, K]`` per channel; ``scale``: ``[N, K/gs, 1]`` or
    ``[N, 1]`` in ``scale_dtype`` (NNCF stores float16); ``zero_point``: uint8 of the scale's
    shape, or None for symmetric modes.
    """

    weight: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None


def nncf_compress(w: np.ndarray, mode: str = "int4_sym", group_size: int | None = 128, *,
                  src_dtype: str | None = None, scale_dtype: str = "f16", threads: int | None = None,
                  name: str = "tensor", packed: bool = False) -> NNCFWeight:
    """NNCF integer weight compression (INT4_SYM, INT4_ASYM, INT8_SYM, INT8_ASYM), bit-identical to
    ``nncf...weight_lowering.do_integer_quantization`` for a weight reduced along K.

    Quants are computed with the float32 scale (as NNCF does); the returned scale is then stored
    in ``scale_dtype`` ("f16" as NNCF's OpenVINO backend writes it, or "f32"). With ``packed``
    (4-bit modes), ``weight`` is the flat u4/i4 bytes of :func:`pack_4bit`, made in the same pass.
    :raises UnsupportedPrecisionError: ``group_size`` does not divide K (pick one that does, or
        ``None`` for per-channel).
    """
    if mode not in NNCF_MODES:
        raise _checks.UnsupportedPrecisionError(f"NNCF mode must be one of {tuple(NNCF_MODES)}, got {mode!r}")
    if group_size is not None:
        group_size = _checks.group_size(group_size, NNCF_GROUP_SIZES, "NNCF")
    sdt = _checks.dtype_name(scale_dtype, "scale_dtype")
    w, src = _checks.weight_2d(w, src_dtype, name)
    if group_size is not None:
        _checks.divides(w.shape[1], group_size, name, "NNCF", "choose a group size that divides K, or group_size=None (per channel)")
    if packed and NNCF_MODES[mode][0] != 4:
        raise _checks.UnsupportedPrecisionError(f"packed output is for 4-bit NNCF modes, not {mode}")
    res = _native.nncf(w, src, mode, group_size, _checks.threads_of(threads), name, packed)
    if res is None:
        res = reference.nncf(_finite(w, src, name), mode, group_size)
        if packed:
            res = (reference.pack_u4(res[0]), *res[1:])
    q, scale, zp = res
    stored = reference.store_scale(scale, sdt)
    _no_inf_scales(stored, name, sdt, "NNCF")
    return NNCFWeight(q, stored, None if zp is None else zp.astype(np.uint8))


def nncf_dequantize(c: NNCFWeight, scale_dtype: str | None = None) -> np.ndarray:
    """float32 ``[N, K]`` = (q - zp) * scale, the decompression subgraph's result."""
    sdt = _checks.dtype_name(scale_dtype, "scale_dtype") if scale_dtype else (
        "bf16" if c.scale.dtype == np.uint16 else "f32")
    scale = reference.stored_to_f32(c.scale, sdt) if sdt == "bf16" else c.scale
    out = reference.nncf_dequantize(c.weight, scale, c.zero_point)
    return out.reshape(out.shape[0], -1)


def pack_4bit(values: np.ndarray) -> np.ndarray:
    """Bytes of an OpenVINO u4/i4 Constant: element 2i in the low nibble of byte i (flat order)."""
    a = np.asarray(values)
    if a.dtype in (np.int8, np.uint8):
        out = _native.pack_nibbles(a)
        if out is not None:
            return out
    return reference.pack_u4(a)


def unpack_4bit(packed: np.ndarray, count: int, *, signed: bool = False) -> np.ndarray:
    """Values back from :func:`pack_4bit` bytes (int8 sign-extended when ``signed``)."""
    return reference.unpack_u4(packed, count, signed)


# --------------------------------------------------------------------------- helpers


def _finite(w: np.ndarray, src: str, name: str) -> np.ndarray:
    x = reference.decode(w, src)
    if not np.isfinite(x).all():
        raise _checks.not_finite(name, int(np.argmin(np.isfinite(x).all(axis=1))))
    return x


def _no_inf_scales(stored: np.ndarray, name: str, sdt: str, fmt: str) -> None:
    if sdt == "f32":
        return
    vals = reference.stored_to_f32(np.asarray(stored), sdt)
    if not np.isfinite(vals).all():
        raise _checks.scale_overflow(name, sdt, fmt)
