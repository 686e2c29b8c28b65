"""The tiny checkpoint factory: real layout, every quirk, determinism, sharp predictions, the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from phi_quant.fidelity import EVAL_TEXT, log_softmax
from phi_quant.model.source import open_model
from phi_quant.reference import ReferenceModel
from phi_quant.testing.factory import (
    ALL_VARIANTS,
    VARIANTS,
    cached_checkpoint,
    make_checkpoint,
    make_large_checkpoint,
    variants_of,
)
from phi_quant.testing.prompts import LONG_PROMPT, test_prompts


@pytest.mark.parametrize("variant", VARIANTS)
def test_layout_and_quirks(variant):
    path = cached_checkpoint(variant)
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"} <= names
    raw = json.loads((path / "config.json").read_text())
    assert raw["architectures"] == ["Phi3ForCausalLM"] and raw["model_type"] == "phi3"
    assert raw["torch_dtype"] == "bfloat16" and "sliding_window" in raw
    with open_model(path) as src:
        c = src.config
        tok = src.hf_tokenizer()
        assert c.hidden_size % 256 == 0 and c.intermediate_size % 256 == 0 and c.head_dim == 64
        assert c.hidden_size == c.num_heads * c.head_dim
        assert (c.rope.rotary_dim // 2) % 8 == 0 and c.vocab_size % 64 == 0
        assert tok.get_vocab_size(with_added_tokens=True) <= c.vocab_size
        cfg = src.tokenizer_config
        assert cfg["chat_template"] and src.chat_template == cfg["chat_template"]
        added = {t.content for t in tok.get_added_tokens_decoder().values()}
        end = {"phi4": "<|im_end|>"}.get(variant, "<|end|>")
        assert {"<|endoftext|>", end} <= added
        assert all(e < tok.get_vocab_size(with_added_tokens=True) for e in c.eos_token_ids)
        gen = src.generation_config["eos_token_id"]
        assert tok.id_to_token(gen[0] if isinstance(gen, list) else gen) in added
        if variant.startswith("phi3"):
            assert "tokenizer.model" in src.tokenizer_files and c.vocab_size > tok.get_vocab_size()
            assert tok.token_to_id("<0x0A>") is not None  # byte fallback
            assert c.num_kv_heads == c.num_heads and c.sliding_window is not None
        else:
            assert c.is_gqa
        if c.rope.is_longrope:
            assert len(set(c.rope.long_factor)) == len(c.rope.long_factor)  # distinct values
            assert c.rope.original_max_position == 64 and c.max_position_embeddings == 4096
        if variant == "phi4":
            assert c.sliding_window is None and c.rope.theta == 250000.0
            assert tok.get_vocab_size(with_added_tokens=True) == c.vocab_size  # dummies fill every id
        if variant == "phi4-mini":
            assert c.tie_word_embeddings and c.rope.rotary_dim == 48
            assert "lm_head.weight" not in json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]


def test_phimoe_layout_and_quirks():
    """The hub's Phi-3.5-MoE layout: per-expert w1/w2/w3, a router, LayerNorm shifts, every bias, mscales."""
    assert variants_of("phimoe") == ("phimoe",) and variants_of("phi3") == VARIANTS
    path = cached_checkpoint("phimoe")
    raw = json.loads((path / "config.json").read_text())
    assert raw["architectures"] == ["PhiMoEForCausalLM"] and raw["model_type"] == "phimoe"
    assert (raw["num_local_experts"], raw["num_experts_per_tok"], raw["router_jitter_noise"]) == (4, 2, 0.01)
    assert raw["attention_bias"] and raw["lm_head_bias"] and "qkv_proj" not in str(raw)
    assert {"short_mscale", "long_mscale", "original_max_position_embeddings"} <= set(raw["rope_scaling"])
    names = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    for n in ("model.layers.1.block_sparse_moe.gate.weight", "model.layers.1.block_sparse_moe.experts.3.w2.weight",
              "model.layers.0.input_layernorm.bias", "model.layers.0.self_attn.v_proj.bias", "model.norm.bias",
              "lm_head.bias"):
        assert n in names, n
    with open_model(path) as src:
        c = src.config
        assert c.is_moe and c.norm == "layer" and c.is_gqa and c.rope.is_longrope and "tokenizer.model" in src.tokenizer_files
        assert all(d % 256 == 0 for t in src.tensor_infos() if t.role.is_matmul for d in t.shape[1:])
        norms = [t.to_float32() for t in src.tensors() if t.role.is_norm]
        shifts = [t.to_float32() for t in src.tensors() if t.role.is_bias]
        assert all(0.69 <= n.min() and n.max() <= 1.31 for n in norms) and all(np.abs(b).max() > 0.05 for b in shifts)


@pytest.mark.parametrize("variant", ("phi4", "phi4-mini"))
def test_byte_level_tokenizers_use_the_real_split_regex(variant):
    from phi_quant.testing.tiny_tokenizers import CL100K_PATTERN, O200K_PATTERN

    tj = json.loads((cached_checkpoint(variant) / "tokenizer.json").read_text())
    split, byte_level = tj["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"]["Regex"] == (CL100K_PATTERN if variant == "phi4" else O200K_PATTERN)
    assert byte_level["type"] == "ByteLevel" and not byte_level["use_regex"]
    assert tj["decoder"]["type"] == "ByteLevel" and tj["model"]["merges"]


@pytest.mark.parametrize("variant", ("phi3-mini", "phi3.5-longrope"))
def test_sentencepiece_model_agrees_with_tokenizer_json(variant):
    import sentencepiece as spm

    path = cached_checkpoint(variant)
    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    with open_model(path) as src:
        tok = src.hf_tokenizer()
    texts = [p for p in test_prompts(variant) if "<|" not in p] + [EVAL_TEXT, "  two  spaces\tand\nlines 12345"]
    for text in texts:
        assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text), text[:30]
    for i in range(sp.get_piece_size()):
        assert tok.id_to_token(i) == sp.id_to_piece(i)
    assert len({sp.get_score(i) for i in range(259, sp.get_piece_size())}) > 100  # real scores for llama.cpp


def test_prompts_cover_both_rope_regimes():
    for variant in ALL_VARIANTS:
        prompts = test_prompts(variant)
        assert any(ord(ch) > 0x3000 for ch in prompts[1]) and any(ord(ch) > 0x1F000 for ch in prompts[2])
        with open_model(cached_checkpoint(variant)) as src:
            tok, orig = src.hf_tokenizer(), src.config.rope.original_max_position
            lengths = [len(tok.encode(p, add_special_tokens=False).ids) for p in prompts]
            chat_ids = tok.encode(prompts[3], add_special_tokens=False).ids
            assert any(i >= tok.get_vocab_size(with_added_tokens=False) for i in chat_ids)  # special tokens
        assert all(n + 8 <= min(orig or 64, 64) for n in lengths[:4]), lengths  # short prompts stay short
        if src.config.rope.is_longrope:
            assert prompts[-1] == LONG_PROMPT and orig < lengths[-1] <= 256, lengths


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_predictions_are_sharp_and_attention_matters(variant):
    """Random weights, but a model worth quantizing: peaked distributions that depend on context."""
    with open_model(cached_checkpoint(variant)) as src:
        ref, tok = ReferenceModel.from_source(src), src.hf_tokenizer()
        vocab = src.config.vocab_size
    ids = tok.encode(EVAL_TEXT, add_special_tokens=False).ids[:60]
    lp = log_softmax(ref.logits(ids))
    max_prob = float(np.exp(lp.max(-1)).mean())
    entropy = float(-(np.exp(lp) * lp).sum(-1).mean())
    print(f"{variant}: mean max-prob {max_prob:.3f} (uniform {1 / vocab:.4f}), entropy {entropy:.2f} vs log(V) {np.log(vocab):.2f}")
    assert max_prob > 0.3 and entropy < 0.5 * np.log(vocab)
    changed = list(ids)
    changed[0] = ids[1]
    delta = np.abs(ref.logits(changed)[-1] - ref.logits(ids)[-1]).max()
    assert delta > 0.5, delta  # the first token still moves the last position's logits


def test_seeded_and_deterministic(tmp_path):
    a = make_checkpoint("phi4-mini", tmp_path / "a", seed=3)
    b = make_checkpoint("phi4-mini", tmp_path / "b", seed=3, num_shards=1)
    c = make_checkpoint("phi4-mini", tmp_path / "c", seed=4)
    assert (b / "model.safetensors").is_file() and not (b / "model.safetensors.index.json").exists()
    for name in ("tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    with open_model(a) as sa, open_model(b) as sb, open_model(c) as sc:
        for ta, tb, tc in zip(sa.tensors(), sb.tensors(), sc.tensors()):
            assert np.array_equal(ta.raw(), tb.raw())
            if ta.role.is_matmul:
                assert not np.array_equal(ta.raw(), tc.raw())


def test_dtypes_hold_the_same_values(tmp_path):
    srcs = {d: open_model(make_checkpoint("phi3-mini", tmp_path / d, dtype=d)) for d in ("bf16", "f16", "f32")}
    assert json.loads((tmp_path / "f16" / "config.json").read_text())["torch_dtype"] == "float16"
    for tb, th, tf in zip(*(s.tensors() for s in srcs.values())):
        assert (tb.dtype, th.dtype, tf.dtype) == ("bf16", "f16", "f32")
        f32 = tf.to_float32()
        np.testing.assert_allclose(tb.to_float32(), f32, rtol=2**-8, atol=0)
        np.testing.assert_allclose(th.to_float32(), f32, rtol=2**-10, atol=1e-6)


def test_cache_is_shared_and_safe_across_processes(tmp_path):
    env = dict(os.environ, PHI_QUANT_TEST_CACHE=str(tmp_path))
    code = "from phi_quant.testing.factory import cached_checkpoint; print(cached_checkpoint('phi3-mini'))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(outs) == 1
    (root,) = [p for p in tmp_path.iterdir()]
    assert [p.name for p in root.iterdir()] == ["phi3-mini-bf16"]  # no temporary leftovers
    with open_model(outs.pop()) as src:
        assert len(src.tensor_infos()) == 15


def test_large_checkpoint_shape(tmp_path):
    """A small instance of the large-checkpoint writer (the >= 1 GB one is in test_streaming_rss)."""
    path = make_large_checkpoint(tmp_path, min_bytes=50_000_000)
    with open_model(path) as src:
        assert src.total_bytes >= 50_000_000 and src.config.vocab_size == 32064
        t = src.tensor("down", 0).to_float32()
        assert np.isfinite(t).all() and 0.0039 <= np.abs(t).min() and np.abs(t).max() < 0.0079
