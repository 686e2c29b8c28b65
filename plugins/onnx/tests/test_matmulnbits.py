"""MatMulNBits B / scales / zero_points equal onnxruntime's own quantizer, bit for bit.

onnxruntime's ``quantize_matmul_4bits`` / ``quantize_matmul_8bits`` (the MLAS blockwise quantizer
its tools use) take the weight as [K, N]; our quantize hook takes the checkpoint's [N, K].
"""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.capi import _pybind_state as ort_c

from phi_quant.model.tensors import SourceTensor, TensorRole
from phi_quant.types import ExportOptions

from phi_quant_onnx import plugin


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _tensor(arr: np.ndarray, dtype: str) -> SourceTensor:
    return SourceTensor("model.layers.0.mlp.down_proj.weight", TensorRole.DOWN, 0, dtype, tuple(arr.shape), _loader=lambda: arr)


def _ort_quantize(w_nk: np.ndarray, bits: int, block: int, symmetric: bool):
    n, k = w_nk.shape
    kb = -(-k // block)
    packed = np.zeros((n, kb, block * bits // 8), np.uint8)
    scales = np.zeros(n * kb, w_nk.dtype)
    zp = np.zeros(n * (-(-kb * bits // 8)), np.uint8)
    fn = ort_c.quantize_matmul_4bits if bits == 4 else ort_c.quantize_matmul_8bits
    fn(packed, np.ascontiguousarray(w_nk.T), scales, zp, block, n, k, symmetric)
    return packed, scales.reshape(n, kb), zp.reshape(n, -1)


CASES = [(bits, block, sym) for bits in (4, 8) for block in (16, 32, 128) for sym in (True, False)]


@pytest.mark.parametrize("bits,block,symmetric", CASES)
def test_equal_to_onnxruntime_quantizer(bits, block, symmetric):
    rng = np.random.default_rng(bits * 1000 + block + symmetric)
    # K = 200: not a multiple of any block size, so the padded last block is covered too.
    w = rng.standard_normal((40, 200)).astype(np.float32) * 0.05
    w[3, :40] = 0.0  # an all-zero block
    w[5, 7] = 0.9  # an outlier
    raw = _bf16_bits(w)
    exact = (raw.astype(np.uint32) << 16).view(np.float32)  # the values onnxruntime sees
    q = plugin.quantize(
        tensor=_tensor(raw, "bf16"),
        options=ExportOptions(precision=f"int{bits}", group_size=block, symmetric=symmetric),
    )
    B, scales, zp = _ort_quantize(exact, bits, block, symmetric)
    assert q.arrays["B"].dtype == np.uint8 and q.arrays["B"].shape == B.shape
    np.testing.assert_array_equal(q.arrays["B"], B)
    assert q.arrays["scales"].dtype == np.float32
    np.testing.assert_array_equal(q.arrays["scales"].view(np.uint32), scales.view(np.uint32))
    if symmetric:
        assert "zero_points" not in q.arrays  # the graph then omits the input: implicit 2^(bits-1)
    else:
        np.testing.assert_array_equal(q.arrays["zero_points"], zp)
    assert q.meta == {"bits": bits, "block_size": block, "symmetric": symmetric, "K": 200, "N": 40}


@pytest.mark.parametrize("bits", [4, 8])
def test_fp16_scales_for_gpu_targets_equal_onnxruntime(bits):
    """cuda/dml exports run fp16 activations, so scales are float16, quantized with the stored scale."""
    w = (np.random.default_rng(7).standard_normal((24, 96)) * 0.05).astype(np.float16)
    q = plugin.quantize(tensor=_tensor(w, "f16"), options=ExportOptions(precision=f"int{bits}", target="cuda", symmetric=False))
    B, scales, zp = _ort_quantize(w, bits, 32, False)
    np.testing.assert_array_equal(q.arrays["B"], B)
    assert q.arrays["scales"].dtype == np.float16
    np.testing.assert_array_equal(q.arrays["scales"].view(np.uint16), scales.view(np.uint16))
    np.testing.assert_array_equal(q.arrays["zero_points"], zp)


def test_dequantize_matches_what_the_op_computes():
    w = (np.random.default_rng(3).standard_normal((16, 64)) * 0.1).astype(np.float32)
    q = plugin.quantize(tensor=_tensor(w, "f32"), options=ExportOptions(precision="int4", symmetric=False))
    deq = q.dequantize()
    assert deq.shape == w.shape
    assert np.abs(deq - w).max() <= np.abs(w).max() / 15 + 1e-6  # within one 4-bit step of the block range
