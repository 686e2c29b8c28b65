"""Calls into the compiled kernel ``phi_quant._kernel`` (cffi, API mode).

Each function returns the format's arrays, or ``None`` when the compiled module is missing so
the caller runs :mod:`phi_quant.quant.reference` instead. C return codes become exceptions here.
"""

from __future__ import annotations

import warnings

import numpy as np

from phi_quant.errors import KernelError
from phi_quant.quant import _checks


class KernelFallbackWarning(RuntimeWarning):
    """The compiled kernel is missing; the (slower) numpy reference is used instead."""


try:  # pragma: no branch
    from phi_quant._kernel import ffi, lib  # type: ignore[import-not-found]
except ImportError as _exc:  # pragma: no cover - exercised by the fallback test
    ffi = lib = None
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None

_warned = False


def native_available() -> bool:
    """True when the compiled C kernel is importable."""
    return lib is not None


def _missing() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"phi_quant._kernel is not built ({_IMPORT_ERROR}); using the numpy reference quantizer, "
            "which is much slower. Reinstall phi-quant (pip install -e .) with a C compiler to build it.",
            KernelFallbackWarning,
            stacklevel=3,
        )


_DTYPE = {"f32": 0, "f16": 1, "bf16": 2}
_NP = {"f32": np.float32, "f16": np.uint16, "bf16": np.uint16}
_GGML = {"Q4_0": (2, 18), "Q4_1": (3, 20), "Q8_0": (8, 34)}


def _src(w: np.ndarray):
    """Pointer and row stride (in elements) of a 2-D array with adjacent elements in each row."""
    return ffi.cast("const void *", w.ctypes.data), w.strides[0] // w.itemsize


def _ptr(a: np.ndarray | None):
    return ffi.NULL if a is None else ffi.cast("void *", a.ctypes.data)


def _check(rc: int, bad, name: str, scale_dtype: str = "f16", fmt: str = "") -> None:
    if rc == 0:
        return
    if rc == lib.PQ_ERR_NONFINITE:
        raise _checks.not_finite(name, int(bad[0]))
    if rc == lib.PQ_ERR_SCALE:
        raise _checks.scale_overflow(name, scale_dtype, fmt)
    if rc == lib.PQ_ERR_CODES:
        raise KernelError(f"tensor {name}: a quantization recipe produced a code outside the {fmt} range "
                          f"(row {int(bad[0])}); this is a bug in the recipe")
    if rc == lib.PQ_ERR_NOMEM:
        raise MemoryError(f"tensor {name}: the quantization kernel could not allocate its row buffers")
    raise KernelError(f"tensor {name}: the quantization kernel rejected its arguments (code {rc}); this is a bug")


def convert(w, src, dst, threads):
    """Dense array of ``w``'s values in ``dst`` (f16/bf16 as uint16 bits), any number of dims."""
    if lib is None:
        _missing()
        return None
    shape = w.shape
    flat = np.ascontiguousarray(w).reshape(-1, shape[-1] if w.ndim and shape[-1] else 1) if w.size else None
    if flat is None:
        return np.zeros(shape, _NP[dst])
    out = np.empty(flat.shape, _NP[dst])
    p, stride = _src(flat)
    rc = lib.pq_convert(p, _DTYPE[src], flat.shape[0], flat.shape[1], stride, _DTYPE[dst], _ptr(out), threads)
    _check(rc, None, "tensor")
    return out.reshape(shape)


#: numpy storage of each stored scale dtype (bf16 travels as its raw uint16 bits).
_SCALE_NP = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}


# The outputs each format's kernel fills, the same whether it quantizes or packs given codes.

def _ggml_out(n: int, k: int, scheme: str) -> tuple[int, np.ndarray]:
    code, nbytes = _GGML[scheme]
    return code, np.empty((n, k // 32 * nbytes), np.uint8)


def _matmulnbits_out(n: int, k: int, bits: int, block_size: int, symmetric: bool, scale_dtype: str):
    kb = -(-k // block_size)
    blocks = np.empty((n, kb, block_size * bits // 8), np.uint8)
    scales = np.empty((n, kb), np.float32 if scale_dtype == "f32" else np.float16)
    zero_points = None if symmetric else np.empty((n, (kb * bits + 7) // 8), np.uint8)
    return blocks, scales, zero_points


def _mlx_out(n: int, k: int, bits: int, group_size: int, scale_dtype: str):
    dt = _SCALE_NP[scale_dtype]
    return (np.empty((n, k * bits // 32), np.uint32), np.empty((n, k // group_size), dt),
            np.empty((n, k // group_size), dt))


def ggml(w, src, scheme, threads, name):
    if lib is None:
        _missing()
        return None
    n, k = w.shape
    code, out = _ggml_out(n, k, scheme)
    bad = ffi.new("int64_t *")
    p, stride = _src(w)
    rc = lib.pq_ggml_quantize(p, _DTYPE[src], n, k, stride, code, _ptr(out), threads, bad)
    _check(rc, bad, name, "f16", "ggml")
    return out


def matmulnbits(w, src, bits, block_size, symmetric, scale_dtype, threads, name):
    if lib is None:
        _missing()
        return None
    n, k = w.shape
    B, scales, zp = _matmulnbits_out(n, k, bits, block_size, symmetric, scale_dtype)
    bad = ffi.new("int64_t *")
    p, stride = _src(w)
    rc = lib.pq_matmulnbits_quantize(p, _DTYPE[src], n, k, stride, bits, block_size, int(symmetric),
                                     _DTYPE[scale_dtype], _ptr(B), _ptr(scales), _ptr(zp), threads, bad)
    _check(rc, bad, name, scale_dtype, "MatMulNBits")
    return B, scales, zp


def mlx(w, src, bits, group_size, scale_dtype, threads, name):
    if lib is None:
        _missing()
        return None
    n, k = w.shape
    wq, scales, biases = _mlx_out(n, k, bits, group_size, scale_dtype)
    bad = ffi.new("int64_t *")
    p, stride = _src(w)
    rc = lib.pq_mlx_quantize(p, _DTYPE[src], n, k, stride, bits, group_size, _DTYPE[scale_dtype],
                             _ptr(wq), _ptr(scales), _ptr(biases), threads, bad)
    _check(rc, bad, name, scale_dtype, "MLX")
    return wq, scales, biases


def nncf(w, src, mode, group_size, threads, name, packed=False):
    """(q, float32 scale, int32 zero point or None) shaped like :func:`reference.nncf`; with
    ``packed`` (4-bit modes) q is the flat u4/i4 bytes of :func:`reference.pack_u4` instead."""
    if lib is None:
        _missing()
        return None
    bits, sym = {"int4_sym": (4, True), "int4_asym": (4, False), "int8_sym": (8, True), "int8_asym": (8, False)}[mode]
    n, k = w.shape
    g = k if group_size is None else group_size
    scale = np.empty((n, k // g), np.float32)
    zp = None if sym else np.empty((n, k // g), np.uint8)
    bad = ffi.new("int64_t *")
    p, stride = _src(w)
    if packed:
        q = np.empty(n * k // 2, np.uint8)
        rc = lib.pq_nncf_quantize_packed(p, _DTYPE[src], n, k, stride, int(sym), g, _ptr(q), _ptr(scale), _ptr(zp),
                                         threads, bad)
    else:
        q = np.empty((n, k), np.int8 if sym else np.uint8)
        rc = lib.pq_nncf_quantize(p, _DTYPE[src], n, k, stride, bits, int(sym), g, _ptr(q), _ptr(scale), _ptr(zp),
                                  threads, bad)
    _check(rc, bad, name)
    if packed:
        shape = (n, 1) if group_size is None else (n, k // g, 1)
        return q, scale.reshape(shape), None if zp is None else zp.reshape(shape).astype(np.int32)
    if group_size is None:
        return q, scale, None if zp is None else zp.astype(np.int32)
    shape = (n, k // g, 1)
    return q.reshape(n, k // g, g), scale.reshape(shape), None if zp is None else zp.reshape(shape).astype(np.int32)


def pack_nibbles(values):
    """OpenVINO u4/i4 bytes of int8/uint8 ``values`` (flat order), or None without the kernel."""
    if lib is None:
        return None
    flat = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
    out = np.empty((flat.size + 1) // 2, np.uint8)
    if flat.size:
        lib.pq_pack_nibbles(ffi.cast("const uint8_t *", flat.ctypes.data), flat.size, _ptr(out))
    return out


# --------------------------------------------------------------------------- packing given values


def _codes(codes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(codes).view(np.uint8) if codes.dtype == np.int8 else np.ascontiguousarray(codes, np.uint8)


def _f32(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32)


def ggml_pack(codes, d, m, scheme, threads, name):
    if lib is None:
        _missing()
        return None
    n, k = codes.shape
    code, out = _ggml_out(n, k, scheme)
    c, d, m = _codes(codes), _f32(d), _f32(m)
    bad = ffi.new("int64_t *")
    rc = lib.pq_ggml_pack(ffi.cast("const uint8_t *", c.ctypes.data), ffi.cast("const float *", d.ctypes.data),
                          ffi.NULL if m is None else ffi.cast("const float *", m.ctypes.data), n, k, code,
                          _ptr(out), threads, bad)
    _check(rc, bad, name, "f16", "ggml")
    return out


def matmulnbits_pack(codes, scales, zero_points, bits, block_size, scale_dtype, threads, name):
    if lib is None:
        _missing()
        return None
    n, k = codes.shape
    c, s = _codes(codes), _f32(scales)
    z = None if zero_points is None else np.ascontiguousarray(zero_points, np.uint8)
    B, s_out, z_out = _matmulnbits_out(n, k, bits, block_size, z is None, scale_dtype)
    bad = ffi.new("int64_t *")
    rc = lib.pq_matmulnbits_pack(ffi.cast("const uint8_t *", c.ctypes.data), ffi.cast("const float *", s.ctypes.data),
                                 ffi.NULL if z is None else ffi.cast("const uint8_t *", z.ctypes.data), n, k, bits,
                                 block_size, _DTYPE[scale_dtype], _ptr(B), _ptr(s_out), _ptr(z_out), threads, bad)
    _check(rc, bad, name, scale_dtype, "MatMulNBits")
    return B, s_out, z_out


def mlx_pack(codes, scales, biases, bits, group_size, scale_dtype, threads, name):
    if lib is None:
        _missing()
        return None
    n, k = codes.shape
    c, s, b = _codes(codes), _f32(scales), _f32(biases)
    wq, s_out, b_out = _mlx_out(n, k, bits, group_size, scale_dtype)
    bad = ffi.new("int64_t *")
    rc = lib.pq_mlx_pack(ffi.cast("const uint8_t *", c.ctypes.data), ffi.cast("const float *", s.ctypes.data),
                         ffi.cast("const float *", b.ctypes.data), n, k, bits, group_size, _DTYPE[scale_dtype],
                         _ptr(wq), _ptr(s_out), _ptr(b_out), threads, bad)
    _check(rc, bad, name, scale_dtype, "MLX")
    return wq, s_out, b_out


def nncf_pack(codes, scales, zero_points, bits, symmetric, group, scale_dtype, threads, name):
    """Flat packed weight bytes, stored scales [n, k/group] and packed zero points (or None)."""
    if lib is None:
        _missing()
        return None
    n, k = codes.shape
    g = k // group
    c, s = _codes(codes), _f32(scales)
    z = None if symmetric else np.ascontiguousarray(zero_points, np.uint8)
    q_out = np.empty((n * k + 1) // 2 if bits == 4 else n * k, np.uint8)
    s_out = np.empty((n, g), _SCALE_NP[scale_dtype])
    z_out = None if symmetric else np.empty((n * g + 1) // 2 if bits == 4 else n * g, np.uint8)
    bad = ffi.new("int64_t *")
    rc = lib.pq_nncf_pack(ffi.cast("const uint8_t *", c.ctypes.data), ffi.cast("const float *", s.ctypes.data),
                          ffi.NULL if z is None else ffi.cast("const uint8_t *", z.ctypes.data), n, k, bits,
                          int(symmetric), group, _DTYPE[scale_dtype], _ptr(q_out), _ptr(s_out), _ptr(z_out),
                          threads, bad)
    _check(rc, bad, name, scale_dtype, "NNCF")
    return q_out, s_out, z_out
