"""The saved IR has the layout OpenVINO GenAI and optimum-intel expect, and NNCF's weight form."""

from __future__ import annotations

import openvino as ov
import pytest

from phi_quant.model.source import open_model
from phi_quant.testing.factory import cached_checkpoint


def _ops(model, kind):
    return [op for op in model.get_ordered_ops() if op.get_type_name() == kind]


def test_stateful_inputs_outputs_and_cache(export_tiny):
    out, _ = export_tiny("phi4-mini", "fp32")
    model = ov.Core().read_model(out / "openvino_model.xml")
    inputs = {i.get_any_name(): (i.get_element_type(), i.get_partial_shape()) for i in model.inputs}
    assert inputs == {
        "input_ids": (ov.Type.i64, ov.PartialShape([-1, -1])),
        "attention_mask": (ov.Type.i64, ov.PartialShape([-1, -1])),
        "position_ids": (ov.Type.i64, ov.PartialShape([-1, -1])),
        "beam_idx": (ov.Type.i32, ov.PartialShape([-1])),
    }
    assert [o.get_any_name() for o in model.outputs] == ["logits"]
    assert model.output("logits").get_partial_shape() == ov.PartialShape([-1, -1, 640])
    with open_model(cached_checkpoint("phi4-mini")) as src:
        cfg = src.config
    reads = _ops(model, "ReadValue")
    assert len(reads) == len(_ops(model, "Assign")) == 2 * cfg.num_layers
    for rv in reads:
        # LLMPipeline finds the sequence axis as the 0 and the batch as the dynamic dim of this shape
        assert rv.get_input_partial_shape(0) == ov.PartialShape([-1, cfg.num_kv_heads, 0, cfg.head_dim])
        consumer = next(iter(rv.output(0).get_target_inputs())).get_node()
        assert consumer.get_type_name() == "Gather"
        assert consumer.input_value(1).get_node().get_friendly_name() == "beam_idx"
    ids = sorted(rv.get_variable_id() for rv in reads)
    assert ids[0] == "past_key_values.0.keypresent.0.key"
    assert len(_ops(model, "ScaledDotProductAttention")) == cfg.num_layers


def _weight_chain(model, name):
    const = next(op for op in model.get_ops() if op.get_friendly_name() == name and op.get_type_name() == "Constant")
    chain, node = [(const.get_type_name(), str(const.get_element_type()))], const
    while node.get_type_name() != "MatMul" and node.get_type_name() != "Gather":
        node = next(iter(node.output(0).get_target_inputs())).get_node()
        chain.append((node.get_type_name(), str(node.get_output_element_type(0))))
    return const, [c[0] for c in chain]


def test_int4_weights_use_nncfs_subgraph(export_tiny):
    out, _ = export_tiny("phi4", "int4", group_size=64)
    model = ov.Core().read_model(out / "openvino_model.xml")
    const, chain = _weight_chain(model, "model.layers.0.self_attn.qkv_proj.weight")
    assert const.get_element_type() == ov.Type.u4 and list(const.get_output_shape(0)) == [768, 512 // 64, 64]
    assert chain == ["Constant", "Convert", "Subtract", "Multiply", "Reshape", "Convert", "MatMul"]
    emb, chain = _weight_chain(model, "model.embed_tokens.weight")
    assert emb.get_element_type() == ov.Type.u8 and list(emb.get_output_shape(0)) == [640, 512]
    assert chain == ["Constant", "Convert", "Subtract", "Multiply", "Convert", "Gather"]


def test_npu_preset_writes_signed_int4_per_channel(export_tiny):
    out, result = export_tiny("phi4", "int4", extra={"preset": "npu"})
    model = ov.Core().read_model(out / "openvino_model.xml")
    const, chain = _weight_chain(model, "model.layers.0.mlp.down_proj.weight")
    assert const.get_element_type() == ov.Type.i4 and list(const.get_output_shape(0)) == [512, 1024]
    assert chain == ["Constant", "Convert", "Multiply", "Convert", "MatMul"]
    assert result.details["preset"] == "npu"


def test_fp16_weights_are_marked_as_decompression(export_tiny):
    out, _ = export_tiny("phi4", "fp16")
    text = (out / "openvino_model.xml").read_text()
    model = ov.Core().read_model(out / "openvino_model.xml")
    const, chain = _weight_chain(model, "model.layers.0.mlp.down_proj.weight")
    assert const.get_element_type() == ov.Type.f16 and chain == ["Constant", "Convert", "MatMul"]
    assert text.count('<attribute name="decompression"') == 2 + 2 * 4  # embed, lm_head, 4 matmuls per layer


@pytest.mark.parametrize("precision", ["int4", "fp16"])
def test_chunked_writes_give_the_same_bin(export_tiny, tmp_path, monkeypatch, precision):
    """Big tensors are packed a few rows at a time; the bytes must not depend on the chunking."""
    from phi_quant.types import ExportOptions, NullProgress
    from phi_quant_openvino import packing
    from phi_quant_openvino.export import export_model

    out, _ = export_tiny("phi4-mini", precision)
    monkeypatch.setattr(packing, "CHUNK_ELEMENTS", 3000)  # 5-6 rows per chunk for K=512
    with open_model(cached_checkpoint("phi4-mini")) as src:
        export_model(src, tmp_path, ExportOptions(precision=precision), NullProgress())
    assert (tmp_path / "openvino_model.bin").read_bytes() == (out / "openvino_model.bin").read_bytes()
