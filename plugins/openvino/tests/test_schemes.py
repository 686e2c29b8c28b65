"""Per-tensor scheme planning: defaults, presets, group-size fallbacks, ratio, refusals."""

from __future__ import annotations

import pytest

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.model.tensors import TensorInfo, TensorRole
from phi_quant.types import ExportOptions
from phi_quant_openvino.schemes import plan_weights, resolve_options


def _infos(k_qkv: int = 256) -> list[TensorInfo]:
    return [
        TensorInfo("model.embed_tokens.weight", TensorRole.EMBED, None, "bf16", (512, 256)),
        TensorInfo("model.layers.0.input_layernorm.weight", TensorRole.ATTN_NORM, 0, "bf16", (256,)),
        TensorInfo("model.layers.0.self_attn.qkv_proj.weight", TensorRole.QKV, 0, "bf16", (768, k_qkv)),
        TensorInfo("model.layers.0.mlp.down_proj.weight", TensorRole.DOWN, 0, "bf16", (256, 512)),
        TensorInfo("lm_head.weight", TensorRole.LM_HEAD, None, "bf16", (512, 256)),
    ]


def _plan(**kw):
    extra = kw.pop("extra", {})
    infos = kw.pop("infos", _infos())
    sens = kw.pop("sensitivity", None)
    return plan_weights(infos, resolve_options(ExportOptions(extra=extra, **kw)), sens)


def test_int4_defaults_follow_nncf():
    plan = _plan(precision="int4")
    labels = {n.split(".")[-2]: s.label for n, s in plan.schemes.items()}
    assert labels == {"embed_tokens": "int8_asym_cw", "qkv_proj": "int4_asym_g128", "down_proj": "int4_asym_g128",
                      "lm_head": "int8_asym_cw"}
    assert plan.options.scheme_name == "int4_asym_g128+int8_asym_cw-emb"
    assert plan.notes == []


def test_int8_is_per_channel_everywhere_and_norms_are_not_planned():
    plan = _plan(precision="int8", symmetric=True)
    assert {s.label for s in plan.schemes.values()} == {"int8_sym_cw"}
    assert "model.layers.0.input_layernorm.weight" not in plan.schemes


@pytest.mark.parametrize("preset, label", [("npu", "int4_sym_cw"), ("npu-g128", "int4_sym_g128")])
def test_npu_presets_are_symmetric(preset, label):
    plan = _plan(precision="int4", extra={"preset": preset})
    assert plan.schemes["model.layers.0.self_attn.qkv_proj.weight"].label == label
    assert plan.schemes["model.embed_tokens.weight"].label == "int8_asym_cw"


def test_target_npu_selects_the_npu_preset():
    assert resolve_options(ExportOptions(precision="int4", target="npu")).primary.label == "int4_sym_cw"


def test_all_layers_puts_embeddings_at_int4():
    plan = _plan(precision="int4", extra={"all_layers": "true"})
    assert plan.schemes["lm_head.weight"].label == "int4_asym_g128"


def test_group_that_does_not_divide_k_falls_back_to_a_dividing_one_with_a_note():
    plan = _plan(precision="int4", infos=_infos(k_qkv=96))
    assert plan.schemes["model.layers.0.self_attn.qkv_proj.weight"].label == "int4_asym_g32"
    assert any("not a multiple of group size 128" in n and "optimum-cli would fail" in n for n in plan.notes)


def test_layer_without_any_dividing_group_stays_int8_with_a_note():
    plan = _plan(precision="int4", infos=_infos(k_qkv=24))
    assert plan.schemes["model.layers.0.self_attn.qkv_proj.weight"].label == "int8_asym_cw"
    assert any("kept at int8_asym_cw" in n for n in plan.notes)


def test_ratio_keeps_the_layers_nncf_would_keep():
    # lower score goes to int4 first; the share of int4 parameters stays below the ratio
    sens = {"model.layers.0.self_attn.qkv_proj.weight": 2.0, "model.layers.0.mlp.down_proj.weight": 1.0}
    plan = _plan(precision="int4", extra={"ratio": 0.5}, sensitivity=sens)
    assert plan.schemes["model.layers.0.mlp.down_proj.weight"].label == "int4_asym_g128"
    assert plan.schemes["model.layers.0.self_attn.qkv_proj.weight"].label == "int8_asym_cw"
    assert any("ratio 0.5" in n for n in plan.notes)


@pytest.mark.parametrize(
    "options",
    [
        ExportOptions(precision="bf16"),
        ExportOptions(precision="int8", group_size=64),
        ExportOptions(precision="int4", group_size=100),
        ExportOptions(precision="int4", group_size=512),
        ExportOptions(precision="int4", extra={"preset": "tpu"}),
        ExportOptions(precision="int4", extra={"ratio": 0}),
        ExportOptions(precision="int4", scheme="Q4_K_M"),
        ExportOptions(precision="fp16", extra={"preset": "npu"}),
        ExportOptions(precision="int4", symmetric=False, extra={"preset": "npu"}),
    ],
    ids=["bf16", "int8-group", "odd-group", "huge-group", "unknown-preset", "zero-ratio", "scheme", "fp16-preset",
         "asym-npu"],
)
def test_refusals_say_what_to_do(options):
    with pytest.raises(UnsupportedPrecisionError) as err:
        resolve_options(options)
    assert len(str(err.value)) > 30


def test_ratio_export_records_the_mix(export_tiny):
    out, result = export_tiny("phi4", "int4", extra={"ratio": 0.6})
    counts = result.details["weight_schemes"]
    assert counts.get("int4_asym_g128", 0) >= 1 and counts.get("int8_asym_cw", 0) >= 3
    assert any(n.startswith("ratio 0.6") for n in result.notes)


def test_missing_tokenizer_json_is_refused_before_any_weights(tmp_path):
    from phi_quant.errors import CheckpointError
    from phi_quant.model.source import open_model
    from phi_quant.testing.factory import copy_checkpoint
    from phi_quant.types import NullProgress
    from phi_quant_openvino.export import export_model

    ckpt = copy_checkpoint("phi4", tmp_path / "ckpt")
    (ckpt / "tokenizer.json").unlink()
    out = tmp_path / "out"
    out.mkdir()
    with open_model(ckpt) as src, pytest.raises(CheckpointError, match="tokenizer.json"):
        export_model(src, out, ExportOptions(precision="int4"), NullProgress())
    assert not (out / "openvino_model.bin").exists()
