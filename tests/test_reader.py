"""Reading checkpoints: the canonical stream, split views, single vs sharded files, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phi_quant.model.source import ModelSource, open_model
from phi_quant.model.tensors import TensorRole
from phi_quant.testing.factory import VARIANTS, cached_checkpoint, make_checkpoint

FUSED_ORDER = ["embed"] + ["attn_norm", "qkv", "o", "ffn_norm", "gate_up", "down"] * 2 + ["final_norm"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_canonical_order_and_metadata(variant):
    with open_model(cached_checkpoint(variant)) as src:
        assert isinstance(src, ModelSource)
        infos = src.tensor_infos()
        want = FUSED_ORDER + ([] if src.config.tie_word_embeddings else ["lm_head"])
        assert [i.role.value for i in infos] == want
        assert [i.layer for i in infos[1:7]] == [0] * 6 and infos[0].layer is None
        assert src.total_bytes == sum(i.nbytes for i in infos) == sum(t.nbytes for t in src.tensors())
        assert sum(i.numel for i in infos) == src.config.parameter_count()
        assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= set(src.tokenizer_files)
        assert src.generation_config["eos_token_id"] and src.chat_template.startswith("{% for message")
        assert src.hf_tokenizer().encode("hello").ids


def test_split_views_are_zero_copy_row_slices():
    with open_model(cached_checkpoint("phi4")) as src:  # GQA: q, k, v have different row counts
        c = src.config
        split = src.tensor_infos(split=True)
        roles = [i.role.value for i in split[:10]]
        assert roles == ["embed", "attn_norm", "q", "k", "v", "o", "ffn_norm", "gate", "up", "down"]
        assert [i.name for i in split[2:5]] == [f"model.layers.0.self_attn.{x}_proj.weight" for x in "qkv"]
        assert [t.info() for t in src.tensors(split=True)] == split
        for layer in range(c.num_layers):
            qkv = src.tensor(TensorRole.QKV, layer).raw()
            q, k, v = (src.tensor(r, layer).raw() for r in ("q", "k", "v"))
            assert (q.shape, k.shape, v.shape) == ((c.q_size, c.hidden_size), (c.kv_size, c.hidden_size), (c.kv_size, c.hidden_size))
            np.testing.assert_array_equal(np.concatenate([q, k, v]), qkv)
            gate_up = src.tensor("gate_up", layer).raw()
            gate, up = src.tensor("gate", layer).raw(), src.tensor("up", layer).raw()
            np.testing.assert_array_equal(gate, gate_up[: c.intermediate_size])
            np.testing.assert_array_equal(up, gate_up[c.intermediate_size :])
            for view in (q, k, v, gate, up):  # memory-mapped, read-only, C-contiguous: no copy was made
                assert isinstance(view, np.memmap) and not view.flags.writeable and view.flags.c_contiguous


def test_raw_dtypes_and_float32():
    with open_model(cached_checkpoint("phi3-mini")) as src:
        t = src.tensor("embed")
        raw = t.raw()
        assert t.dtype == "bf16" and raw.dtype == np.uint16 and raw.shape == t.shape
        f = t.to_float32()
        assert f.dtype == np.float32 and np.array_equal(f.view(np.uint32) >> 16, raw.astype(np.uint32))
        assert np.all(f.view(np.uint32) & 0xFFFF == 0)


def test_single_file_and_sharded_checkpoints_stream_identically(tmp_path):
    one = make_checkpoint("phi3.5-longrope", tmp_path / "one", num_shards=1)
    many = make_checkpoint("phi3.5-longrope", tmp_path / "many", num_shards=5)
    index = json.loads((many / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 5
    assert index["metadata"]["total_size"] == sum(i.nbytes for i in open_model(many).tensor_infos())
    with open_model(one) as a, open_model(many) as b:
        for ta, tb in zip(a.tensors(split=True), b.tensors(split=True)):
            assert ta.info() == tb.info()
            np.testing.assert_array_equal(ta.raw(), tb.raw())


def test_shards_without_index_and_tensors_in_any_order(tmp_path):
    """A directory of shards without an index file is read by scanning every header."""
    path = make_checkpoint("phi3-mini", tmp_path / "ck", num_shards=3)
    (path / "model.safetensors.index.json").unlink()
    with open_model(path) as src, open_model(cached_checkpoint("phi3-mini")) as ref:
        for ta, tb in zip(src.tensors(), ref.tensors()):
            np.testing.assert_array_equal(ta.raw(), tb.raw())


def test_open_model_accepts_str_and_path():
    p = cached_checkpoint("phi4")
    assert open_model(str(p)).path == open_model(p).path == p
