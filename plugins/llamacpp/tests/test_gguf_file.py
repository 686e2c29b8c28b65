"""The streaming writer produces files gguf-py's reader (an independent parser) reads back exactly."""

from __future__ import annotations

import io

import gguf
import numpy as np
import pytest

from phi_quant_llamacpp.constants import ALIGNMENT, GGMLType, ValueType
from phi_quant_llamacpp.gguf_file import GGUFStreamWriter, TensorSlot, Typed, tensor_nbytes
from phi_quant_llamacpp.ggml_lib import ggml_quantize


def test_round_trip_metadata_and_tensors(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 64)).astype(np.float32)
    b = rng.standard_normal((5, 96)).astype(np.float32)
    qb = ggml_quantize(b, GGMLType.Q8_0)
    md = {
        "general.architecture": "phi3",
        "x.u32": Typed(7, ValueType.UINT32),
        "x.f32": Typed(0.5, ValueType.FLOAT32),
        "x.bool": True,
        "x.strings": ["a", "ü", "😀"],
        "x.scores": Typed([1.0, -2.5], ValueType.FLOAT32),
        "x.types": Typed([1, 3, 6], ValueType.INT32),
    }
    path = tmp_path / "t.gguf"
    with open(path, "wb") as fh:
        w = GGUFStreamWriter(fh, md, [TensorSlot("a", a.shape, GGMLType.F32), TensorSlot("b", b.shape, GGMLType.Q8_0)])
        w.write("a", a[:1])  # a tensor may arrive in chunks
        w.write("a", a[1:])
        w.write("b", qb)
        w.finish()
    r = gguf.GGUFReader(str(path))
    assert r.fields["x.u32"].contents() == 7 and r.fields["x.u32"].types == [gguf.GGUFValueType.UINT32]
    assert r.fields["x.f32"].contents() == 0.5
    assert r.fields["x.bool"].contents() is True
    assert r.fields["x.strings"].contents() == ["a", "ü", "😀"]
    assert r.fields["x.scores"].contents() == [1.0, -2.5]
    assert r.fields["x.types"].contents() == [1, 3, 6]
    ta, tb = r.tensors
    assert (ta.name, list(ta.shape), ta.tensor_type) == ("a", [64, 3], gguf.GGMLQuantizationType.F32)
    np.testing.assert_array_equal(ta.data, a)
    assert tb.tensor_type == gguf.GGMLQuantizationType.Q8_0 and list(tb.shape) == [96, 5]
    np.testing.assert_array_equal(np.asarray(tb.data).reshape(qb.shape), qb)
    assert tb.data_offset % ALIGNMENT == 0 and ta.data_offset % ALIGNMENT == 0


def test_refuses_out_of_order_oversized_and_incomplete():
    slots = [TensorSlot("a", (2, 32), GGMLType.F32), TensorSlot("b", (2, 32), GGMLType.F32)]
    w = GGUFStreamWriter(io.BytesIO(), {"k": "v"}, slots)
    with pytest.raises(ValueError, match="out of order"):
        w.write("b", np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError, match="index says"):
        w.write("a", np.zeros((3, 32), np.float32))
    w.write("a", np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError, match="incomplete"):
        w.finish()


def test_tensor_nbytes_and_block_check():
    assert tensor_nbytes(GGMLType.Q4_0, (10, 64)) == 10 * 2 * 18
    assert tensor_nbytes(GGMLType.Q6_K, (2, 512)) == 2 * 2 * 210
    with pytest.raises(ValueError, match="multiple"):
        tensor_nbytes(GGMLType.Q4_0, (2, 48))
