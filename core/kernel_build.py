"""cffi build script for ``phi_quant._kernel`` (API mode), run by setup.py's ``cffi_modules``.

It lives outside the package so that importing phi_quant never imports cffi's build machinery.
The cdef is the block between the CDEF markers of the one public header, so the header stays
the single statement of the C API. Flags are portable: -O3 with no -march (row kernels carry
their own runtime-dispatched AVX2 clone on x86-64 Linux) and -ffp-contract=off so no compiler
fuses a multiply-add: the vendors' rounding depends on every float32 step.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cffi import FFI

KERNELS = Path(__file__).resolve().parent / "phi_quant" / "kernels"
HEADER = KERNELS / "phi_quant_kernel.h"
SOURCES = ["parallel.c", "convert.c", "ggml.c", "matmulnbits.c", "mlx.c", "nncf.c", "pack.c"]


def _cdef() -> str:
    text = HEADER.read_text()
    start = text.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
    return text[start : text.index("/* CDEF-END */")]


def _flags() -> tuple[list[str], list[str]]:
    if sys.platform == "win32":
        return ["/O2", "/fp:precise"], []
    return ["-O3", "-std=c99", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-pthread"], ["-pthread"]


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
_compile, _link = _flags()
ffibuilder.set_source(
    "phi_quant._kernel",
    '#include "phi_quant_kernel.h"',
    sources=[str((KERNELS / s).relative_to(Path.cwd())) if KERNELS.is_relative_to(Path.cwd()) else str(KERNELS / s)
             for s in SOURCES],
    include_dirs=[str(KERNELS)],
    extra_compile_args=_compile,
    extra_link_args=_link,
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(Path(__file__).resolve().parent), verbose=True)
