"""Every tiny variant x every scheme: the GGUF loads in llama.cpp, tokenizes like Hugging Face,
generates, and its next-token distributions match the numpy oracle within measured bounds."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from phi_quant.testing.factory import VARIANTS
from phi_quant_llamacpp import plugin
from phi_quant_llamacpp.constants import Key, TensorName

from phi_quant_llamacpp.constants import PRECISION_SCHEMES

SCHEMES = [(p, s) for p, (d, o) in PRECISION_SCHEMES.items() for s in (d, *o)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_header_describes_the_variant(variant, sources, exported):
    """Architecture keys and tensors match the config: rope dims, LongRoPE, tied output, GQA, window."""
    cfg = sources(variant).config
    out, res = exported(variant, "int4", "Q4_0")
    r = gguf.GGUFReader(str(out / res.files[0]))
    f = lambda k: r.fields[k].contents()  # noqa: E731
    assert f(Key.ARCHITECTURE) == "phi3"
    assert f(Key.ROPE_DIMENSION_COUNT) == cfg.rope.rotary_dim
    assert f(Key.HEAD_COUNT_KV) == cfg.num_kv_heads and f(Key.HEAD_COUNT) == cfg.num_heads
    assert f(Key.SLIDING_WINDOW) == (cfg.sliding_window or 0)
    assert f(Key.ROPE_FREQ_BASE) == pytest.approx(cfg.rope.theta)
    names = {t.name: t for t in r.tensors}
    assert (TensorName.OUTPUT in names) == (not cfg.tie_word_embeddings)
    assert list(names["blk.0.attn_qkv.weight"].shape) == [cfg.hidden_size, cfg.qkv_rows]
    assert list(names["blk.0.ffn_up.weight"].shape) == [cfg.hidden_size, 2 * cfg.intermediate_size]
    if cfg.rope.is_longrope:
        assert f(Key.ROPE_ORIG_CONTEXT) == cfg.rope.original_max_position
        assert f(Key.ROPE_ATTN_FACTOR) == pytest.approx(cfg.rope.attention_factor, rel=1e-6)
        np.testing.assert_array_equal(names[TensorName.ROPE_FACTORS_LONG].data, np.float32(cfg.rope.long_factor))
        np.testing.assert_array_equal(names[TensorName.ROPE_FACTORS_SHORT].data, np.float32(cfg.rope.short_factor))
    else:
        assert TensorName.ROPE_FACTORS_LONG not in names
    assert len(r.fields[Key.TOKENS].data) == cfg.vocab_size
    eos = sources(variant).generation_config.get("eos_token_id", cfg.eos_token_ids)
    assert sorted(r.fields[Key.STOP_IDS].contents()) == sorted(eos if isinstance(eos, (list, tuple)) else [eos])
    assert r.fields[Key.EOS_ID].contents() in r.fields[Key.STOP_IDS].contents()


@pytest.mark.parametrize("variant", VARIANTS)
def test_tokenization_matches_hugging_face(variant, sources, exported, prompt_ids):
    """ASCII, Unicode, emoji and chat-formatted prompts (special tokens parsed) give HF's ids."""
    out, _ = exported(variant, "int4", "Q4_0")
    tok = sources(variant).hf_tokenizer()
    extra = ["", " leading space", "tabs\tand\nnewlines\n\n", "<|user|>\nHi<|end|>\n<|assistant|>\n", "naïve café 東京 🤖👍🏽"]
    with plugin.load_model(path=out, options={}) as model:
        for text, ids in prompt_ids(variant):
            assert model.tokenize(text) == ids, text[:60]
        for text in extra:
            assert model.tokenize(text) == tok.encode(text, add_special_tokens=False).ids, text
        text = prompt_ids(variant)[0][0]  # with the tokenizer's own BOS rule
        assert model.tokenize(text, add_special_tokens=True) == tok.encode(text, add_special_tokens=True).ids


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("precision,scheme", SCHEMES)
def test_fidelity_against_the_oracle(variant, precision, scheme, measured, sources):
    report, ctx = measured(variant, precision, scheme)
    limits = plugin.SCHEME_THRESHOLDS[scheme]
    assert report.kl_mean <= limits.kl_max, report
    assert report.top1_agreement >= limits.top1_min, report
    if limits.max_abs_logit is not None:
        assert report.max_abs_diff <= limits.max_abs_logit, report
    cfg = sources(variant).config
    if cfg.rope.is_longrope:
        # the context choice is part of the claim: long factors exactly for prompts past the original context
        assert [long for n, _, long in ctx] == [n > cfg.rope.original_max_position for n, _, _ in ctx]
        assert any(long for *_, long in ctx), "the longrope prompts must include one past the original context"


@pytest.mark.parametrize("variant", VARIANTS)
def test_kl_rises_with_compression(variant, measured):
    """KL(oracle||GGUF): F32 < F16 <= Q8_0 < Q4_K_M <= Q4_0 (equal within 5% counts as <=)."""
    kl = {s: measured(variant, p, s)[0].kl_mean for p, s in SCHEMES if s in ("F32", "F16", "Q8_0", "Q4_K_M", "Q4_0")}
    assert kl["F32"] < kl["F16"], kl
    assert kl["F16"] <= kl["Q8_0"] * 1.05, kl
    assert kl["Q8_0"] < kl["Q4_K_M"], kl
    assert kl["Q4_K_M"] <= kl["Q4_0"] * 1.05, kl


@pytest.mark.parametrize("variant", VARIANTS)
def test_generates_greedily_like_the_oracle(variant, sources, exported, prompt_ids):
    """F32 greedy continuation equals the oracle's; chat mode renders the template and returns text."""
    from phi_quant.reference import ReferenceModel

    out, _ = exported(variant, "fp32", "F32")
    _, ids = prompt_ids(variant)[0]
    ref = ReferenceModel.from_source(sources(variant)).generate(ids, max_new_tokens=8)
    with plugin.load_model(path=out, options={}) as model:
        got = model.generate_ids(ids, 8)
        assert got, "no token generated"
        assert got[: len(ref)] == list(ref)[: len(got)]
        assert isinstance(model.generate("Hello", max_new_tokens=4, chat=True), str)
        assert isinstance(model.generate("Hello", max_new_tokens=4), str)


def test_longrope_context_choice_is_visible(sources, exported, prompt_ids, oracle_logits):
    """Loaded with a context above the original one, llama.cpp uses the long factors even for a
    short prompt and no longer matches transformers (which would use the short ones): documented."""
    variant = "phi3.5-longrope"
    cfg = sources(variant).config
    out, _ = exported(variant, "fp32", "F32")
    ids = prompt_ids(variant)[0][1]
    assert len(ids) <= cfg.rope.original_max_position
    with plugin.load_model(path=out, options={"context_length": cfg.rope.original_max_position * 2}) as model:
        assert model.uses_long_factors(len(ids))
        diff = float(np.abs(model.logits(ids) - oracle_logits(variant)[0]).max())
    assert diff > 1e-2, "long factors on a short prompt should visibly change the logits"


@pytest.mark.parametrize("variant", VARIANTS)
def test_tokenization_fuzz(variant, sources, exported):
    """300 seeded random strings mixing ASCII, accents, CJK, emoji, whitespace runs, digits and the
    model's special tokens: llama.cpp's ids equal the Hugging Face tokenizer's."""
    import random

    out, _ = exported(variant, "int4", "Q4_0")
    tok = sources(variant).hf_tokenizer()
    specials = [a.content for a in tok.get_added_tokens_decoder().values()]
    pieces = ["the", " quick", "Brown", "fox's", " don't", "日本語", "東京", "😀", "👍🏽", "é", "ñ", "ß", "Ω", "12345", "3.14",
              " ", "  ", "\n", "\n\n", "\t", " \n ", ".", ",", "!?", "(x)", "<", "|>", "'ll", "I'M", *specials]
    rng = random.Random(1234)
    with plugin.load_model(path=out, options={}) as model:
        for _ in range(300):
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
            assert model.tokenize(text) == tok.encode(text, add_special_tokens=False).ids, repr(text)


@pytest.mark.oracle
@pytest.mark.parametrize("variant", VARIANTS)
def test_chat_prompt_matches_transformers(variant, exported):
    """The chat template stored in the GGUF renders and tokenizes exactly as transformers'
    ``apply_chat_template`` does (what ``generate(chat=True)`` feeds the model)."""
    transformers = pytest.importorskip("transformers")
    from phi_quant.testing.factory import cached_checkpoint

    hf = transformers.AutoTokenizer.from_pretrained(cached_checkpoint(variant))
    messages = [{"role": "user", "content": "Hi there, ünïcode 😀"}]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = hf(text, add_special_tokens=False)["input_ids"]
    out, _ = exported(variant, "int4", "Q4_0")
    with plugin.load_model(path=out, options={}) as model:
        assert model.render_chat(messages[0]["content"]) == text
        assert model.tokenize(text) == list(ids)
