"""phi-quant's kernel against each vendor's own quantizer, byte for byte.

- ggml: the C reference quantizers (``quantize_row_q*_ref``) inside the libggml-base that
  llama-cpp-python ships, called through ctypes; and gguf-py's numpy ``gguf.quants``, which agrees
  except on blocks whose extreme is a signed zero (numpy's min/argmax do not keep the first of
  equal values as ggml's scan does): that difference is pinned below, so we trust ggml's C.
- ONNX Runtime: ``quantize_matmul_4bits`` / ``quantize_matmul_8bits`` (weight given as [K, N]).
- MLX: ``mx.quantize`` on float32, float16 and bfloat16 arrays.
- NNCF: ``do_integer_quantization`` (its numpy path and its OpenVINO-compiled path), scales
  stored as float16 the way NNCF's OpenVINO backend makes its scale Constant.

Each vendor test is skipped when that vendor is not installed.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import phi_quant.quant as q
from phi_quant.quant import cases
from phi_quant.quant import reference as R


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(5)
    return {"random": cases.random_weight(rng, 16, 512), "edge": cases.edge_weight(24, 512)}


def _ggml_lib():
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
            path = Path(loc) / "lib" / name
            if path.exists():
                return ctypes.CDLL(str(path))
    return None


GGML = _ggml_lib()


@pytest.mark.skipif(GGML is None, reason="llama-cpp-python (libggml-base) is not installed")
@pytest.mark.parametrize("scheme", list(q.GGML_SCHEMES))
@pytest.mark.parametrize("src", cases.SRC_DTYPES)
def test_ggml_equals_ggml_c_reference(weights, scheme, src):
    fn = getattr(GGML, f"quantize_row_{scheme.lower()}_ref")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    for kind, w in weights.items():
        raw = cases.encode(w, src)
        x = np.ascontiguousarray(R.decode(raw, src))  # what llama.cpp's converter hands ggml
        ours = q.ggml_quantize(raw, scheme, src_dtype=src, threads=2)
        theirs = np.zeros_like(ours)
        for r in range(x.shape[0]):
            fn(x[r].ctypes.data, theirs[r].ctypes.data, x.shape[1])
        assert ours.tobytes() == theirs.tobytes(), (kind, np.where((ours != theirs).any(axis=1))[0])


@pytest.mark.parametrize("scheme", list(q.GGML_SCHEMES))
def test_ggml_equals_gguf_py_except_signed_zero_blocks(weights, scheme):
    gq = pytest.importorskip("gguf.quants")
    from gguf.constants import GGMLQuantizationType

    for kind, w in weights.items():
        ours = q.ggml_quantize(w, scheme)
        with np.errstate(all="ignore"):  # gguf-py divides by zero scales itself
            theirs = gq.quantize(w, GGMLQuantizationType[scheme]).reshape(ours.shape)
        differ = set(np.where((ours != theirs).any(axis=1))[0].tolist())
        if kind == "random":
            assert not differ
        else:  # rows 3 (all -0.0) and 4 (-0.0/+0.0 mixed) of the edge tensor: gguf-py loses the zero's sign
            assert differ <= {3, 4}
            zero_rows = {3, 4} if scheme == "Q4_0" else {4} if scheme == "Q4_1" else set()
            assert differ == zero_rows


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("src", ["f32", "f16"])
def test_matmulnbits_equals_onnxruntime(weights, bits, src):
    ort = pytest.importorskip("onnxruntime.capi._pybind_state")
    quantize = ort.quantize_matmul_4bits if bits == 4 else ort.quantize_matmul_8bits
    dt = np.float32 if src == "f32" else np.float16
    for kind, w0 in weights.items():
        for symmetric in (True, False):
            for block in q.MATMULNBITS_BLOCK_SIZES:
                k = 494 if block > 16 else 512  # 494: the last block is padded
                w = cases.encode(w0[:, :k], src)
                n, kb = w.shape[0], -(-k // block)
                B = np.zeros((n, kb, block * bits // 8), np.uint8)
                scales = np.zeros(n * kb, dt)
                zp = np.zeros(n * ((kb * bits + 7) // 8), np.uint8)
                quantize(B, np.ascontiguousarray(w.T), scales, zp, block, n, k, symmetric)
                oB, os_, oz = q.matmulnbits_quantize(w, bits, block, symmetric, src_dtype=src, scale_dtype=src, threads=2)
                case = (kind, symmetric, block)
                assert oB.tobytes() == B.tobytes(), case
                assert os_.tobytes() == scales.tobytes(), case
                if symmetric:
                    assert oz is None
                else:
                    assert oz.tobytes() == zp.tobytes(), case


@pytest.mark.parametrize("src", cases.SRC_DTYPES)
def test_mlx_equals_mx_quantize(weights, src):
    mx = pytest.importorskip("mlx.core")
    mdt = {"f32": mx.float32, "f16": mx.float16, "bf16": mx.bfloat16}[src]
    for kind, w in weights.items():
        raw = cases.encode(w, src)
        arr = mx.array(R.decode(raw, src)).astype(mdt)
        for bits in (4, 8):
            for group in q.MLX_GROUP_SIZES:
                wq, s, b = mx.quantize(arr, group_size=group, bits=bits)
                oq, os_, ob = q.mlx_quantize(raw, bits, group, src_dtype=src, threads=2)
                case = (kind, bits, group)
                assert oq.tobytes() == np.array(wq).tobytes(), case
                assert R.decode(os_, src).tobytes() == np.array(s.astype(mx.float32)).tobytes(), case
                assert R.decode(ob, src).tobytes() == np.array(b.astype(mx.float32)).tobytes(), case


@pytest.mark.parametrize("optimized", [False, True], ids=["numpy-path", "openvino-path"])
@pytest.mark.parametrize("src", ["f32", "bf16"])
def test_nncf_equals_weight_lowering(weights, monkeypatch, optimized, src):
    pytest.importorskip("nncf")
    ov = pytest.importorskip("openvino")
    from nncf.parameters import CompressWeightsMode
    from nncf.quantization.algorithms.weight_compression.config import WeightCompressionConfig
    from nncf.quantization.algorithms.weight_compression.weight_lowering import do_integer_quantization
    from nncf.tensor import Tensor
    from openvino import opset13

    calls = []
    if optimized:
        import nncf.openvino.optimized_functions as compiled

        real = compiled.do_integer_quantization
        monkeypatch.setattr(compiled, "do_integer_quantization", lambda *a, **k: calls.append(1) or real(*a, **k))
        monkeypatch.delenv("NNCF_DISABLE_OPTIMIZED_COMPRESSION", raising=False)
        big = cases.random_weight(np.random.default_rng(9), 32, 1024)  # above NNCF's size threshold
        todo = {"big": big, "edge": np.concatenate([weights["edge"]] * 2, axis=0)}
    else:
        monkeypatch.setenv("NNCF_DISABLE_OPTIMIZED_COMPRESSION", "1")
        todo = weights
    for kind, w0 in todo.items():
        raw = cases.encode(w0, src)
        w = R.decode(raw, src)
        for mode in q.NNCF_MODES:
            for group in (None, 32, 128):
                config = WeightCompressionConfig(mode=CompressWeightsMode[mode.upper()], group_size=group or -1)
                theirs = do_integer_quantization(Tensor(w.copy()), config, reduction_axes=(1,))
                ours = q.nncf_compress(raw, mode, group, src_dtype=src, threads=2)
                case = (kind, mode, group)
                t = np.asarray(theirs.tensor.data)
                assert t.shape == ours.weight.shape and t.astype(np.int32).tobytes() == ours.weight.astype(np.int32).tobytes(), case
                # NNCF's OpenVINO backend stores the float32 scale as an f16 Constant
                scale16 = opset13.constant(np.asarray(theirs.scale.data), dtype=ov.Type.f16).get_data()
                assert scale16.shape == ours.scale.shape and scale16.tobytes() == ours.scale.tobytes(), case
                if ours.zero_point is None:
                    assert theirs.zero_point is None
                else:
                    assert np.array_equal(np.asarray(theirs.zero_point.data).astype(np.int32), ours.zero_point), case
    assert bool(calls) == optimized  # the OpenVINO-compiled path really ran (or really did not)


def test_ov_u4_and_i4_constants_use_our_nibble_order():
    ov = pytest.importorskip("openvino")
    from openvino import opset13

    u = np.random.default_rng(0).integers(0, 16, 64).astype(np.uint8)
    i = (u.astype(np.int16) - 8).astype(np.int8)
    u_bytes = opset13.constant(u, dtype=ov.Type.u4).get_data().tobytes()
    i_bytes = opset13.constant(i, dtype=ov.Type.i4).get_data().tobytes()
    assert q.pack_4bit(u).tobytes() == u_bytes
    assert q.pack_4bit(i).tobytes() == i_bytes
