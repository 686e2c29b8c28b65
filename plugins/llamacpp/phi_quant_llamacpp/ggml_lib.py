"""ggml's own quantize/dequantize functions, reached through the library llama-cpp-python ships.

Used where our kernel has no counterpart (per-tensor K-quants in the ``quantize`` hook,
dequantizing any ggml type) and by the tests as the vendor's reference quantizer.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

from phi_quant.errors import BackendNotInstalledError

from .constants import BLOCK_SIZES, GGMLType

__all__ = ["ggml_quantize", "ggml_dequantize"]


class _TypeTraits(ctypes.Structure):
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - declared dependency
        raise BackendNotInstalledError("llama-cpp-python is not installed: pip install phi-quant-llamacpp") from e
    libdir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(libdir.glob("libggml-base.*")) + sorted(libdir.glob("ggml-base.*"))
    if not candidates:
        raise BackendNotInstalledError(f"llama-cpp-python at {libdir} ships no libggml-base; reinstall llama-cpp-python")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_float),
    ]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    return lib


def ggml_quantize(w: np.ndarray, ggml_type: GGMLType, importance: np.ndarray | None = None) -> np.ndarray:
    """Quantize a float32 [rows, K] matrix with ggml's reference path -> uint8 [rows, row_bytes].

    ``importance`` (float32 [K], e.g. the calibrated mean x² of each input channel) is ggml's
    importance matrix: the quantizer minimises the error weighted by it (llama-quantize --imatrix).
    """
    w = np.ascontiguousarray(w, dtype=np.float32)
    rows, k = w.reshape(-1, w.shape[-1]).shape
    block, size = BLOCK_SIZES[GGMLType(ggml_type)]
    out = np.empty((rows, k // block * size), dtype=np.uint8)
    imatrix = None
    if importance is not None:
        importance = np.ascontiguousarray(importance, dtype=np.float32)
        if importance.shape != (k,):
            raise ValueError(f"importance has shape {importance.shape}, expected ({k},)")
        imatrix = importance.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    n = _lib().ggml_quantize_chunk(
        int(ggml_type), w.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.ctypes.data, 0, rows, k, imatrix
    )
    assert n == out.nbytes, (n, out.nbytes)
    return out


def ggml_dequantize(data: np.ndarray, ggml_type: GGMLType, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 values of ggml-typed bytes (any type this llama.cpp build knows)."""
    if GGMLType(ggml_type) == GGMLType.F32:
        return np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.float32).reshape(shape).copy()
    traits = _lib().ggml_get_type_traits(int(ggml_type)).contents
    to_float = _TO_FLOAT(traits.to_float)
    src = np.ascontiguousarray(data).view(np.uint8)
    out = np.empty(int(np.prod(shape)), dtype=np.float32)
    to_float(src.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size)
    return out.reshape(shape)
