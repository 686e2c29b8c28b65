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
from phi_quant.testing.factory import VARIANTS, cached_checkpoint, variant_spec

from phi_quant.cli.doctor import PUBLISHED_SHAPES

PHI3 = {"architectures": ["Phi3ForCausalLM"], **PUBLISHED_SHAPES["Phi-3.5-mini"]}


def test_registry_maps_class_and_model_type_to_the_module():
    phi3 = get_architecture("phi3")
    assert isinstance(phi3, Architecture) and architecture_names() == ("phi3",)
    assert architecture_for({"architectures": ["Phi3ForCausalLM"]}) is phi3
    assert architecture_for({"model_type": "phi3"}) is phi3  # no architectures list: model_type decides
    assert normalize_config(PHI3).arch is phi3 and normalize_config(PHI3).arch_name == "phi3"
    with pytest.raises(UnsupportedModelError, match="mixture of experts"):
        architecture_for({"architectures": ["PhiMoEForCausalLM"], "model_type": "phimoe"})
    with pytest.raises(UnsupportedModelError, match="llama is not supported"):
        architecture_for({"model_type": "llama"})
    with pytest.raises(KeyError, match="phi-quant knows: phi3"):
        get_architecture("mamba")


@pytest.mark.parametrize("variant", VARIANTS)
def test_reader_streams_the_architectures_plan(variant):
    with open_model(cached_checkpoint(variant)) as src:
        arch = src.config.arch
        assert arch.name == variant_spec(variant).arch
        plan = arch.stream_plan(src.config)
        infos = src.tensor_infos()
        assert [(t.name, t.role, t.layer, t.shape) for t in plan] == [(i.name, i.role, i.layer, i.shape) for i in infos]
        assert all(i.expert is None for i in infos)
        assert [t.name for t in src.tensors()] == [t.name for t in plan]
        assert src.config.parameter_count() == sum(t.numel for t in plan) == src.config.active_parameter_count()
        # the split stream: the parts of each fused tensor cover its rows exactly, under the arch's names
        for fused, parts in arch.splits(src.config).items():
            whole = src.tensor(fused, 0).to_float32()
            pieces = [src.tensor(p.role, 0) for p in parts]
            assert [p.name for p in pieces] == [arch.hf_name(p.role, 0) for p in parts]
            np.testing.assert_array_equal(np.concatenate([p.to_float32() for p in pieces]), whole)


@pytest.mark.parametrize("model", sorted(PUBLISHED_SHAPES))
def test_sizes_from_the_plan_equal_the_closed_forms(model):
    """The plan-derived sizes are the formulas sizing.py used before the architecture modules."""
    c = normalize_config({"architectures": ["Phi3ForCausalLM"], **PUBLISHED_SHAPES[model]})
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
    assert SUPPORTED_ARCHITECTURES == ("Phi3ForCausalLM",)
    assert hf_name(TensorRole.O, 1) == "model.layers.1.self_attn.o_proj.weight"
    # positional construction (name, role, layer, dtype, shape, loader) keeps working; expert is keyword-only
    arr = np.zeros((2, 4), np.float32)
    t = SourceTensor("x", TensorRole.O, 0, "f32", (2, 4), lambda: arr)
    assert t.expert is None and t.raw() is arr and t.info() == TensorInfo("x", TensorRole.O, 0, "f32", (2, 4))
    assert SourceTensor("x", TensorRole.O, 0, "f32", (2, 4), lambda: arr, expert=3).info().expert == 3
