"""Type stub for the cffi-compiled kernel (built from core/kernel_build.py).

The C API is declared in phi_quant/kernels/phi_quant_kernel.h; call it through
:mod:`phi_quant.quant`, which validates arguments and turns return codes into exceptions.
"""

from typing import Any

class _Lib:
    PQ_OK: int
    PQ_ERR_NONFINITE: int
    PQ_ERR_ARGS: int
    PQ_ERR_NOMEM: int
    PQ_ERR_SCALE: int
    PQ_ERR_CODES: int
    PQ_F32: int
    PQ_F16: int
    PQ_BF16: int
    PQ_GGML_Q4_0: int
    PQ_GGML_Q4_1: int
    PQ_GGML_Q8_0: int
    def pq_ggml_quantize(
        self, src: Any, src_dtype: int, n: int, k: int, row_stride: int, ggml_type: int, dst: Any,
        threads: int, bad_row: Any,
    ) -> int: ...
    def pq_matmulnbits_quantize(
        self, src: Any, src_dtype: int, n: int, k: int, row_stride: int, bits: int, block: int,
        symmetric: int, scale_dtype: int, B: Any, scales: Any, zero_points: Any, threads: int, bad_row: Any,
    ) -> int: ...
    def pq_mlx_quantize(
        self, src: Any, src_dtype: int, n: int, k: int, row_stride: int, bits: int, group: int,
        scale_dtype: int, wq: Any, scales: Any, biases: Any, threads: int, bad_row: Any,
    ) -> int: ...
    def pq_nncf_quantize(
        self, src: Any, src_dtype: int, n: int, k: int, row_stride: int, bits: int, symmetric: int,
        group: int, q: Any, scale: Any, zero_point: Any, threads: int, bad_row: Any,
    ) -> int: ...
    def pq_nncf_quantize_packed(
        self, src: Any, src_dtype: int, n: int, k: int, row_stride: int, symmetric: int,
        group: int, q: Any, scale: Any, zero_point: Any, threads: int, bad_row: Any,
    ) -> int: ...
    def pq_ggml_pack(
        self, codes: Any, d: Any, m: Any, n: int, k: int, ggml_type: int, dst: Any, threads: int, bad_row: Any,
    ) -> int: ...
    def pq_matmulnbits_pack(
        self, codes: Any, scales: Any, zero_points: Any, n: int, k: int, bits: int, block: int, scale_dtype: int,
        B: Any, scales_out: Any, zp_out: Any, threads: int, bad_row: Any,
    ) -> int: ...
    def pq_mlx_pack(
        self, codes: Any, scales: Any, biases: Any, n: int, k: int, bits: int, group: int, scale_dtype: int,
        wq: Any, scales_out: Any, biases_out: Any, threads: int, bad_row: Any,
    ) -> int: ...
    def pq_nncf_pack(
        self, codes: Any, scales: Any, zero_points: Any, n: int, k: int, bits: int, symmetric: int, group: int,
        scale_dtype: int, q_out: Any, scale_out: Any, zp_out: Any, threads: int, bad_row: Any,
    ) -> int: ...
    def pq_convert(
        self, src: Any, src_dtype: int, n: int, k: int, row_stride: int, dst_dtype: int, dst: Any, threads: int,
    ) -> int: ...
    def pq_pack_nibbles(self, src: Any, n: int, dst: Any) -> None: ...
    def pq_max_threads(self) -> int: ...

lib: _Lib
ffi: Any
