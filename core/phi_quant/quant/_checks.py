"""Argument checks shared by every public quantizer: the C kernel trusts what passes here."""

from __future__ import annotations

import os

import numpy as np

from phi_quant.errors import BadWeightsError, KernelError, UnsupportedPrecisionError

_DTYPE_ALIASES = {
    "f32": "f32", "fp32": "f32", "float32": "f32",
    "f16": "f16", "fp16": "f16", "float16": "f16", "half": "f16",
    "bf16": "bf16", "bfloat16": "bf16",
}
_NUMPY_OF = {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16), "bf16": np.dtype(np.uint16)}


def dtype_name(name: str | None, what: str = "dtype") -> str:
    """Canonical dtype name ('f32', 'f16', 'bf16') from any common spelling."""
    key = str(name).lower() if name is not None else ""
    if key not in _DTYPE_ALIASES:
        raise KernelError(f"unknown {what} {name!r}: use 'f32', 'f16' or 'bf16'")
    return _DTYPE_ALIASES[key]


def weight_2d(w: object, src_dtype: str | None, name: str) -> tuple[np.ndarray, str]:
    """The weight as a 2-D numpy array whose elements are stored in ``src_dtype``.

    ``src_dtype`` may be omitted for float32 and float16 arrays; bf16 weights arrive as uint16
    bit patterns and must say ``src_dtype="bf16"``. Rows may be strided (a slice of a larger
    tensor); a row whose elements are not adjacent is copied once, that row block only.
    """
    if isinstance(w, np.ndarray) and w.ndim != 2:
        raise KernelError(f"tensor {name}: expected a 2-D [N, K] weight, got shape {w.shape}")
    w, src = any_array(w, src_dtype, name)
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise KernelError(f"tensor {name}: empty weight of shape {w.shape}")
    if w.strides[1] != w.itemsize or w.strides[0] < 0 or w.strides[0] % w.itemsize:
        w = np.ascontiguousarray(w)
    return w, src


def any_array(w: object, src_dtype: str | None, name: str) -> tuple[np.ndarray, str]:
    """A numpy array of any shape whose elements are stored in ``src_dtype`` (for conversions)."""
    if not isinstance(w, np.ndarray):
        raise KernelError(f"tensor {name}: expected a numpy array, got {type(w).__name__}")
    if src_dtype is None:
        src = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}.get(w.dtype)
        if src is None:
            raise KernelError(
                f"tensor {name}: cannot tell the source dtype of a {w.dtype} array; pass src_dtype="
                "'f32', 'f16' or 'bf16' (bf16 weights are uint16 bit patterns)"
            )
    else:
        src = dtype_name(src_dtype, "src_dtype")
    if w.dtype != _NUMPY_OF[src]:
        raise KernelError(f"tensor {name}: src_dtype={src!r} needs a {_NUMPY_OF[src]} array, got {w.dtype}")
    return w, src


def group_size(g: int, allowed: tuple[int, ...], fmt: str) -> int:
    if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or int(g) not in allowed:
        raise UnsupportedPrecisionError(f"{fmt} group size must be one of {allowed}, got {g!r}")
    return int(g)


def bits_of(bits: int, fmt: str) -> int:
    if isinstance(bits, bool) or bits not in (4, 8):
        raise UnsupportedPrecisionError(f"{fmt} supports 4 or 8 bits, got {bits!r}")
    return int(bits)


def divides(k: int, g: int, name: str, fmt: str, hint: str) -> None:
    if k % g:
        raise UnsupportedPrecisionError(
            f"tensor {name}: its input dimension K={k} is not a multiple of the {fmt} group size {g}; {hint}"
        )


def threads_of(threads: int | None) -> int:
    """Worker count: the argument, else $PHI_QUANT_THREADS, else the CPUs this process may use."""
    if threads is None:
        env = os.environ.get("PHI_QUANT_THREADS")
        if env:
            try:
                threads = int(env)
            except ValueError:
                raise KernelError(f"PHI_QUANT_THREADS must be a whole number, got {env!r}") from None
        else:
            try:
                threads = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - macOS / Windows
                threads = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise KernelError(f"threads must be a positive integer, got {threads!r}")
    return min(int(threads), 256)


def not_finite(name: str, row: int | None = None) -> BadWeightsError:
    where = f" (first in row {row})" if row is not None else ""
    return BadWeightsError(
        f"tensor {name} holds NaN or Inf values{where}; the checkpoint is damaged: re-download or "
        "re-save it before quantizing"
    )


def scale_overflow(name: str, scale_dtype: str, fmt: str) -> BadWeightsError:
    return BadWeightsError(
        f"tensor {name} has values so large that a {fmt} scale overflows {scale_dtype}; the weights "
        "are probably damaged (or keep this tensor unquantized / use float32 scales)"
    )
