"""The folder mlx-lm loads: shards of bounded size with an index, config.json with the
quantization block and per-module overrides, tokenizer files; option refusals."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from phi_quant.errors import UnsupportedModelError, UnsupportedPrecisionError
from phi_quant.types import ExportOptions, NullProgress
from phi_quant_mlx import plugin
from phi_quant_mlx.safetensors_stream import ShardedWriter, TensorSpec, plan_shards


def _header(path):
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        return json.loads(fh.read(n)), 8 + n


def test_shards_are_bounded_indexed_and_load(exported, sources):
    from mlx_lm import load

    bound = 300_000
    out, res = exported("phi4", "int4", shard_size=bound)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    for s in shards:
        head, start = _header(s)
        names = [k for k in head if k != "__metadata__"]
        assert head["__metadata__"] == {"format": "mlx"}
        data = s.stat().st_size - start
        assert data == max(v["data_offsets"][1] for k, v in head.items() if k != "__metadata__")
        assert data <= bound or len(names) == 1, f"{s.name} holds {data} bytes in {len(names)} tensors"
        assert all(index["weight_map"][n] == s.name for n in names)
    assert index["metadata"]["total_size"] == sum(s.stat().st_size - _header(s)[1] for s in shards)
    model, tok = load(str(out))
    assert model.model.embed_tokens.bits == 4
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (out / name).exists()
    assert set(res.files) >= {s.name for s in shards} | {"config.json", "model.safetensors.index.json"}


def test_overrides_reach_config_and_mlx_modules(exported):
    from mlx_lm import load

    out, res = exported("phi4", "int4", overrides="down_proj=8,lm_head=8:32,layers.1.self_attn.o_proj=off")
    quant = json.loads((out / "config.json").read_text())["quantization"]
    assert quant["model.layers.0.mlp.down_proj"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    assert quant["lm_head"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    assert quant["model.layers.1.self_attn.o_proj"] is False
    model, _ = load(str(out))
    layer0, layer1 = model.model.layers
    assert (layer0.mlp.down_proj.bits, layer0.mlp.down_proj.group_size) == (8, 64)
    assert (model.lm_head.bits, model.lm_head.group_size) == (8, 32)
    assert type(layer1.self_attn.o_proj).__name__ == "Linear"
    assert (layer0.self_attn.qkv_proj.bits, layer0.mlp.gate_up_proj.bits) == (4, 4)
    assert "model.layers.1.self_attn.o_proj" in res.details["unquantized_modules"]


def test_tied_embedding_is_the_quantized_output_layer(exported):
    from mlx_lm import load

    out, _ = exported("phi4-mini", "int4")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and cfg["partial_rotary_factor"] == 0.75
    model, _ = load(str(out))
    assert not hasattr(model, "lm_head") and model.model.embed_tokens.bits == 4
    assert cfg["num_key_value_heads"] == 2 and cfg["rope_scaling"]["type"] == "longrope"


def test_lm_head_override_on_a_tied_model_targets_the_embedding(exported):
    from mlx_lm import load

    out, _ = exported("phi4-mini", "int4", overrides="lm_head=8")
    quant = json.loads((out / "config.json").read_text())["quantization"]
    assert quant["model.embed_tokens"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    model, _ = load(str(out))
    assert model.model.embed_tokens.bits == 8 and model.model.layers[0].mlp.down_proj.bits == 4


def test_context_length_rewrites_long_factor(exported, sources):
    cfg = sources("phi4-mini").config
    orig = cfg.rope.original_max_position
    short_out, res = exported("phi4-mini", "fp32", context_length=orig)
    written = json.loads((short_out / "config.json").read_text())
    assert written["rope_scaling"]["long_factor"] == list(cfg.rope.short_factor)
    assert written["phi_quant"]["original_long_factor"] == list(cfg.rope.long_factor)
    assert any("LongRoPE" in n for n in res.notes)
    long_out, _ = exported("phi4-mini", "fp32", context_length=orig + 1)
    written = json.loads((long_out / "config.json").read_text())
    assert written["rope_scaling"]["long_factor"] == list(cfg.rope.long_factor)


@pytest.mark.parametrize(
    "options, match",
    [
        (ExportOptions("int4", group_size=48), "group size 48"),
        (ExportOptions("int4", symmetric=True), "asymmetric"),
        (ExportOptions("int4", extra={"overrides": "down_proj=3"}), "bits must be 4 or 8"),
        (ExportOptions("int4", extra={"overrides": "nothing_here=8"}), "match no module"),
        (ExportOptions("int4", extra={"overrides": "down_proj"}), "MODULE=BITS"),
        (ExportOptions("fp16", extra={"overrides": "down_proj=8"}), "int8/int4"),
        (ExportOptions("int4", scheme="Q4_0"), "no scheme"),
        (ExportOptions("int2"), "no precision"),
        (ExportOptions("int4", extra={"shard_size": "lots"}), "not a size"),
        (ExportOptions("int4", extra={"dtype": "float8"}), "choose one of float32"),
        (ExportOptions("fp16", extra={"dtype": "float32"}), "int8/int4"),
    ],
)
def test_refused_options(options, match, sources, tmp_path):
    with pytest.raises(UnsupportedPrecisionError, match=match):
        plugin.export(source=sources("phi3-mini"), output_dir=tmp_path, options=options, progress=NullProgress())
    assert list(tmp_path.iterdir()) == []


def test_head_dim_mlx_cannot_express_is_refused():
    from phi_quant.model.config import normalize_config
    from phi_quant_mlx.config_json import check_supported

    raw = {"architectures": ["Phi3ForCausalLM"], "hidden_size": 256, "num_attention_heads": 4, "head_dim": 32,
           "num_hidden_layers": 1, "intermediate_size": 512, "vocab_size": 512, "max_position_embeddings": 4096}
    with pytest.raises(UnsupportedModelError, match="head_dim"):
        check_supported(normalize_config(raw))


def test_writer_places_slices_and_detects_missing_bytes(tmp_path):
    specs = [TensorSpec("a", "F32", (2, 3)), TensorSpec("b", "U32", (4,)), TensorSpec("c", "F16", (5,))]
    plan = plan_shards(specs, 40)
    assert len(plan.files) == 2
    w = ShardedWriter(tmp_path, plan)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    w.write("a", a[1], start=12)
    w.write("a", a[0])
    w.write("b", np.arange(4, dtype=np.uint32))
    w.write("c", np.ones(5, np.float16))
    w.close()
    from safetensors.numpy import load_file

    first = load_file(tmp_path / plan.files[0])
    assert np.array_equal(first["a"], a) and np.array_equal(first["b"], np.arange(4, dtype=np.uint32))
    assert np.array_equal(load_file(tmp_path / plan.files[1])["c"], np.ones(5, np.float16))

    w = ShardedWriter(tmp_path, plan_shards(specs[:1], 1 << 20))
    w.write("a", a[0])
    with pytest.raises(ValueError, match="not completely written"):
        w.close()
    w = ShardedWriter(tmp_path, plan_shards(specs[:1], 1 << 20))
    with pytest.raises(ValueError, match="outside"):
        w.write("a", np.zeros(7, np.float32))
    w.abort()
