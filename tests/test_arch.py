"""The architecture modules: the registry, the stream plan the reader follows, sizes derived from
it, the oracle's dispatch, and the old import paths plugins use."""

from __future__ import annotations

import numpy as np
import pytest

from phi_quant.arch import (
    Architecture,
    ReferenceModel,
    TensorRole,
    architecture_for,
    architecture_names,
    get_architecture,
    normalize_config,
)
from phi_quant.arch.phi3 import Phi3Reference
from phi_quant.errors import UnsupportedModelError
from phi_quant.model.source import open_model
from phi_quant.sizing import bits_per_weight, kv_cache_bytes, weight_bytes
from phi_quant.testing.factory import ALL_VARIANTS, cached_checkpoint, variant_spec

from phi_quant.cli.doctor import PUBLISHED_SHAPES

PHI3 = PUBLISHED_SHAPES["Phi-3.5-mini"]
DENSE_MODELS = sorted(m for m, shape in PUBLISHED_SHAPES.items() if shape["architectures"] == ["Phi3ForCausalLM"])


def test_registry_maps_class_and_model_type_to_the_module():
    phi3, phimoe = get_architecture("phi3"), get_architecture("phimoe")
    assert isinstance(phi3, Architecture) and architecture_names() == ("phi3", "phimoe")
    assert architecture_for({"architectures": ["Phi3ForCausalLM"]}) is phi3
    assert architecture_for({"model_type": "phi3"}) is phi3  # no architectures list: model_type decides
    assert normalize_config(PHI3).arch is phi3 and normalize_config(PHI3).arch_name == "phi3"
    for moe in ({"architectures": ["PhiMoEForCausalLM"]}, {"architectures": ["PhimoeForCausalLM"]}, {"model_type": "phimoe"}):
        assert architecture_for(moe) is phimoe  # the hub's remote-code class, transformers' own, model_type
    with pytest.raises(UnsupportedModelError, match="block-sparse attention"):
        architecture_for({"architectures": ["Phi3SmallForCausalLM"]})
    with pytest.raises(UnsupportedModelError, match="llama is not supported.*PhiMoEForCausalLM/PhimoeForCausalLM"):
        architecture_for({"model_type": "llama"})
    with pytest.raises(KeyError, match="phi-quant knows: phi3, phimoe"):
        get_architecture("mamba")


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_reader_streams_the_architectures_plan(variant):
    with open_model(cached_checkpoint(variant)) as src:
        arch = src.config.arch
        assert arch.name == variant_spec(variant).arch
        plan = arch.stream_plan(src.config)
        infos = src.tensor_infos()
        assert [(t.name, t.role, t.layer, t.expert, t.shape) for t in plan] == [
            (i.name, i.role, i.layer, i.expert, i.shape) for i in infos]
        assert [t.name for t in src.tensors()] == [t.name for t in plan]
        assert src.config.parameter_count() == sum(t.numel for t in plan)
        if not src.config.is_moe:
            assert all(i.expert is None for i in infos) and src.config.active_parameter_count() == src.config.parameter_count()
        # the split stream: the parts of each fused tensor cover its rows exactly, under the arch's names
        for fused, parts in arch.splits(src.config).items():
            whole = src.tensor(fused, 0).to_float32()
            pieces = [src.tensor(p.role, 0) for p in parts]
            assert [p.name for p in pieces] == [arch.hf_name(p.role, 0) for p in parts]
            np.testing.assert_array_equal(np.concatenate([p.to_float32() for p in pieces]), whole)


@pytest.mark.parametrize("model", DENSE_MODELS)
def test_sizes_from_the_plan_equal_the_closed_forms(model):
    """The plan-derived sizes are the formulas sizing.py used before the architecture modules."""
    c = normalize_config(dict(PUBLISHED_SHAPES[model]))
    norms = (2 * c.num_layers + 1) * c.hidden_size
    for precision, group in (("fp32", None), ("fp16", None), ("int8", 32), ("int4", 128)):
        bpw = bits_per_weight(precision, group)
        assert weight_bytes(c, precision, group) == int((c.parameter_count() - norms) * bpw / 8 + norms * 4)
    assert kv_cache_bytes(c, 4096) == 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4096 * 2


def test_hf_names_of_phi3():
    arch = get_architecture("phi3")
    assert arch.hf_name(TensorRole.QKV, 3) == "model.layers.3.self_attn.qkv_proj.weight"
    assert arch.hf_name(TensorRole.GATE, 0) == "model.layers.0.mlp.gate_proj.weight"
    assert arch.hf_name(TensorRole.LM_HEAD) == "lm_head.weight"
    with pytest.raises(ValueError, match="needs a layer"):
        arch.hf_name(TensorRole.DOWN)
    with pytest.raises(ValueError, match="no experts"):
        arch.hf_name(TensorRole.DOWN, 0, expert=1)


def test_reference_model_builds_the_architectures_oracle():
    with open_model(cached_checkpoint("phi4-mini")) as src:
        ref = ReferenceModel.from_source(src)
        assert type(ref) is Phi3Reference and isinstance(ref, ReferenceModel)
        direct = ReferenceModel(src.config, {t.name: t.to_float32() for t in src.tensors()})
        assert type(direct) is Phi3Reference
        np.testing.assert_array_equal(ref.logits([1, 2, 3]), direct.logits([1, 2, 3]))


def test_old_import_paths_still_work():
    import phi_quant.arch as arch
    from phi_quant.model.config import SUPPORTED_ARCHITECTURES, PhiConfig, RopeSpec
    from phi_quant.model.config import normalize_config as old_normalize
    from phi_quant.model.tensors import SourceTensor, TensorInfo, hf_name
    from phi_quant.model.tensors import TensorRole as OldRole
    from phi_quant.reference import ReferenceModel as OldReference
    from phi_quant.reference import rope_tables

    assert (PhiConfig, RopeSpec, old_normalize, OldRole, OldReference, rope_tables) == (
        arch.PhiConfig, arch.RopeSpec, arch.normalize_config, arch.TensorRole, arch.ReferenceModel, arch.rope_tables)
    assert SUPPORTED_ARCHITECTURES == ("Phi3ForCausalLM", "PhiMoEForCausalLM", "PhimoeForCausalLM")
    assert hf_name(TensorRole.O, 1) == "model.layers.1.self_attn.o_proj.weight"
    # positional construction (name, role, layer, dtype, shape, loader) keeps working; expert is keyword-only
    arr = np.zeros((2, 4), np.float32)
    t = SourceTensor("x", TensorRole.O, 0, "f32", (2, 4), lambda: arr)
    assert t.expert is None and t.raw() is arr and t.info() == TensorInfo("x", TensorRole.O, 0, "f32", (2, 4))
    assert SourceTensor("x", TensorRole.O, 0, "f32", (2, 4), lambda: arr, expert=3).info().expert == 3


def test_phi35_moe_sizes_are_the_published_ones():
    """Phi-3.5-MoE from its config: 41.9 B parameters, 6.6 B active per token (2 of 16 experts)."""
    c = normalize_config(dict(PUBLISHED_SHAPES["Phi-3.5-MoE"]))
    assert (c.arch_name, c.family, c.num_experts, c.experts_per_token) == ("phimoe", "phi-3.5-moe", 16, 2)
    h, i, q, kv, v, layers = 4096, 6400, 4096, 1024, 32064, 32
    attention = 2 * (h * q + q) + 2 * (h * kv + kv)  # q, o and k, v with their biases
    per_layer = attention + 4 * h + 16 * h  # two LayerNorms (scale + shift) and the router
    expert = 3 * h * i
    fixed = 2 * v * h + v + 2 * h  # embedding, lm_head and its bias, final LayerNorm
    assert c.parameter_count() == fixed + layers * (per_layer + 16 * expert) == 41_873_153_344
    assert c.active_parameter_count() == fixed + layers * (per_layer + 2 * expert) == 6_640_999_744
    vectors = layers * (q + 2 * kv + h + 4 * h) + v + 2 * h  # biases and LayerNorms stay fp32
    int4 = weight_bytes(c, "int4", 32)  # 4.5 bits per weight: memory holds all 16 experts ...
    assert int4 == int((c.parameter_count() - vectors) * 4.5 / 8 + vectors * 4)
    # ... while a token reads 2 of them
    assert weight_bytes(c, "int4", 32, active=True) == int((c.active_parameter_count() - vectors) * 4.5 / 8 + vectors * 4)


def test_phimoe_stream_order_groups_experts_by_matrix():
    """Per layer: norms, q/k/v/o with biases, router, then every expert's w1, every w3, every w2."""
    c = normalize_config(dict(PUBLISHED_SHAPES["Phi-3.5-MoE"]) | {"num_hidden_layers": 1, "num_local_experts": 3})
    plan = c.arch.stream_plan(c)
    layer = [(t.role.value, t.expert) for t in plan if t.layer == 0]
    assert layer == [("attn_norm", None), ("attn_norm_bias", None), ("q", None), ("q_bias", None), ("k", None),
                     ("k_bias", None), ("v", None), ("v_bias", None), ("o", None), ("o_bias", None),
                     ("ffn_norm", None), ("ffn_norm_bias", None), ("router", None),
                     ("gate", 0), ("gate", 1), ("gate", 2), ("up", 0), ("up", 1), ("up", 2),
                     ("down", 0), ("down", 1), ("down", 2)]
    assert [t.role.value for t in plan if t.layer is None] == ["embed", "final_norm", "final_norm_bias", "lm_head",
                                                               "lm_head_bias"]
    arch = c.arch
    assert arch.hf_name(TensorRole.DOWN, 5, 7) == "model.layers.5.block_sparse_moe.experts.7.w2.weight"
    assert arch.hf_name(TensorRole.ROUTER, 0) == "model.layers.0.block_sparse_moe.gate.weight"
    with pytest.raises(ValueError, match="needs an expert index"):
        arch.hf_name(TensorRole.GATE, 0)
    with pytest.raises(ValueError, match="no tensor of role qkv"):
        arch.hf_name(TensorRole.QKV, 0)
    assert TensorRole.Q_BIAS.weight_role is TensorRole.Q and TensorRole.Q.bias_role is TensorRole.Q_BIAS
    assert not TensorRole.FFN_NORM_BIAS.is_matmul and TensorRole.ROUTER.is_matmul and TensorRole.LM_HEAD_BIAS.is_bias


@pytest.mark.parametrize("change, message", [
    ({"num_experts_per_tok": 4}, "exactly 2 experts"),
    ({"hidden_act": "gelu"}, "use silu"),
    ({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 64, "long_factor": [1.0] * 64,
                       "short_mscale": "big", "long_mscale": 1.0}}, "short_mscale must be a number"),
])
def test_phimoe_config_refusals(change, message):
    with pytest.raises(UnsupportedModelError, match=message):
        normalize_config(dict(PUBLISHED_SHAPES["Phi-3.5-MoE"]) | change)


def test_phimoe_refuses_other_layouts(tmp_path):
    """A checkpoint with transformers 5's in-memory stacked experts, or a fused qkv_proj, is refused by name."""
    arch = get_architecture("phimoe")
    with pytest.raises(UnsupportedModelError, match="stacked.*block_sparse_moe.experts.N"):
        arch.check_layout(["model.layers.0.mlp.experts.gate_up_proj"])
    with pytest.raises(UnsupportedModelError, match="fused qkv_proj"):
        arch.check_layout(["model.layers.0.self_attn.qkv_proj.weight"])
