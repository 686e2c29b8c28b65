"""Kernel speed: quantize one 3072x8192 weight (Phi-3-mini's o_proj/down-sized) from fp32 and bf16.

Prints, measured in the same run, the time of a memcpy of the same source buffer, the numpy
reference, each vendor's own quantizer where installed (gguf-py, ggml's C reference through
llama-cpp-python's libggml-base, onnxruntime's MatMulNBits quantizer, mx.quantize, NNCF), and
phi-quant's C kernel on 1 and 2 threads, as best-of-N wall times and ratios to memcpy.

    python bench/kernel.py [--rows 3072] [--cols 8192] [--repeat 7] [--quick]

Not a test: numbers depend on the machine and its load. Results go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import platform
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

import phi_quant.quant as q
from phi_quant.quant import cases
from phi_quant.quant import reference as R


def best_ms(fn: Callable[[], object], repeat: int, budget_s: float = 4.0) -> tuple[float, float]:
    """Best wall time and best process CPU time (all threads), in ms, over up to ``repeat`` runs.

    CPU time is less disturbed by other processes on a busy machine; with N threads it is
    about N times the wall time when the work splits well.
    """
    fn()  # warm up: page faults, lazy imports, thread start
    walls, cpus = [], []
    start = time.perf_counter()
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        if time.perf_counter() - start > budget_s:
            break
    return min(walls) * 1e3, min(cpus) * 1e3


def vendor_calls(w: np.ndarray, src: str) -> dict[str, Callable[[], object]]:
    """The vendors' quantizers on this weight, each fed the input type it takes."""
    calls: dict[str, Callable[[], object]] = {}
    x32 = np.ascontiguousarray(R.decode(w, src))
    n, k = w.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import gguf.quants as gq
            from gguf.constants import GGMLQuantizationType as T

            def gguf_call(t):
                return lambda: gq.quantize(R.decode(w, src), t)  # gguf-py needs float32 input

            calls["gguf-py Q4_0"] = gguf_call(T.Q4_0)
            calls["gguf-py Q8_0"] = gguf_call(T.Q8_0)
        except ImportError:
            pass
        spec = importlib.util.find_spec("llama_cpp")
        lib_path = spec and spec.submodule_search_locations and Path(spec.submodule_search_locations[0]) / "lib" / "libggml-base.so"
        if lib_path and lib_path.exists():
            lib = ctypes.CDLL(str(lib_path))
            for scheme, nbytes in (("q4_0", 18), ("q8_0", 34)):
                fn = getattr(lib, f"quantize_row_{scheme}_ref")
                fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
                out = np.empty(n * k // 32 * nbytes, np.uint8)

                def ggml_c(fn=fn, out=out):
                    x = np.ascontiguousarray(R.decode(w, src))  # ggml's converter hands it float32; keep x alive
                    fn(x.ctypes.data, out.ctypes.data, n * k)

                calls[f"ggml C ref {scheme.upper()}"] = ggml_c
        try:
            from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

            wt = np.ascontiguousarray(x32.T)  # onnxruntime takes [K, N]
            for bits, fn in ((4, quantize_matmul_4bits), (8, quantize_matmul_8bits)):
                kb = k // 32
                B = np.empty((n, kb, 32 * bits // 8), np.uint8)
                s = np.empty(n * kb, np.float32)
                z = np.empty(n * ((kb * bits + 7) // 8), np.uint8)
                calls[f"onnxruntime {bits}-bit asym b32"] = lambda fn=fn, B=B, s=s, z=z: fn(B, wt, s, z, 32, n, k, False)
        except ImportError:
            pass
        try:
            import mlx.core as mx

            arr = mx.array(x32).astype(mx.bfloat16 if src == "bf16" else mx.float32)
            mx.eval(arr)
            for bits in (4, 8):
                calls[f"mx.quantize {bits}-bit g64"] = lambda bits=bits: mx.eval(*mx.quantize(arr, group_size=64, bits=bits))
        except ImportError:
            pass
        try:
            from nncf.parameters import CompressWeightsMode
            from nncf.quantization.algorithms.weight_compression.config import WeightCompressionConfig
            from nncf.quantization.algorithms.weight_compression.weight_lowering import do_integer_quantization
            from nncf.tensor import Tensor

            for mode, group in (("INT4_SYM", 128), ("INT8_ASYM", -1)):
                cfg = WeightCompressionConfig(mode=CompressWeightsMode[mode], group_size=group)
                calls[f"NNCF {mode}"] = lambda cfg=cfg: do_integer_quantization(Tensor(R.decode(w, src)), cfg, reduction_axes=(1,))
        except ImportError:
            pass
    return calls


def ours(w: np.ndarray, src: str, threads: int) -> dict[str, Callable[[], object]]:
    return {
        "ggml Q4_0": lambda: q.ggml_quantize(w, "Q4_0", src_dtype=src, threads=threads),
        "ggml Q4_1": lambda: q.ggml_quantize(w, "Q4_1", src_dtype=src, threads=threads),
        "ggml Q8_0": lambda: q.ggml_quantize(w, "Q8_0", src_dtype=src, threads=threads),
        "MatMulNBits 4-bit asym b32": lambda: q.matmulnbits_quantize(w, 4, 32, False, src_dtype=src, threads=threads),
        "MatMulNBits 8-bit sym b32": lambda: q.matmulnbits_quantize(w, 8, 32, True, src_dtype=src, threads=threads),
        "MLX 4-bit g64": lambda: q.mlx_quantize(w, 4, 64, src_dtype=src, threads=threads),
        "MLX 8-bit g64": lambda: q.mlx_quantize(w, 8, 64, src_dtype=src, threads=threads),
        "NNCF int4_sym g128": lambda: q.nncf_compress(w, "int4_sym", 128, src_dtype=src, threads=threads),
        "NNCF int8_asym per-channel": lambda: q.nncf_compress(w, "int8_asym", None, src_dtype=src, threads=threads),
    }


def reference_calls(w: np.ndarray, src: str) -> dict[str, Callable[[], object]]:
    return {
        "numpy reference Q4_0": lambda: R.ggml_q4_0(R.decode(w, src)),
        "numpy reference MatMulNBits 4-bit": lambda: R.matmulnbits(R.decode(w, src), 4, 32, False),
        "numpy reference MLX 4-bit": lambda: R.mlx_affine(R.decode(w, src), 4, 64, "f32"),
        "numpy reference NNCF int8_asym": lambda: R.nncf(R.decode(w, src), "int8_asym", None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3072)
    ap.add_argument("--cols", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="skip the numpy reference and the vendors")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    w32 = cases.random_weight(rng, args.rows, args.cols)
    print(f"# phi-quant kernel bench: {args.rows}x{args.cols} weight, {platform.processor() or platform.machine()}, "
          f"native kernel: {q.native_available()}, best of {args.repeat}")
    for src in ("f32", "bf16"):
        w = cases.encode(w32, src)
        dst = np.empty_like(w)
        memcpy, memcpy_cpu = best_ms(lambda: np.copyto(dst, w), args.repeat * 2)
        print(f"\n## source {src}: {w.nbytes / 2**20:.0f} MiB, memcpy {memcpy:.1f} ms wall, {memcpy_cpu:.1f} ms CPU\n")
        print(f"| {'what':48s} | {'wall ms':>8s} | {'x memcpy':>8s} | {'CPU ms':>8s} | {'x memcpy':>8s} |")
        print(f"|{'-' * 50}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")

        def row(label: str, ms: tuple[float, float]) -> None:
            wall, cpu = ms
            print(f"| {label:48s} | {wall:8.1f} | {wall / memcpy:8.2f} | {cpu:8.1f} | {cpu / memcpy_cpu:8.2f} |", flush=True)

        for threads in (1, 2):
            for label, fn in ours(w, src, threads).items():
                row(f"phi-quant {label}, {threads} thread{'s' * (threads > 1)}", best_ms(fn, args.repeat))
        if not args.quick:
            for label, fn in vendor_calls(w, src).items():
                row(label, best_ms(fn, max(1, args.repeat // 2)))
            for label, fn in reference_calls(w, src).items():
                row(label, best_ms(fn, 1))


if __name__ == "__main__":
    main()
