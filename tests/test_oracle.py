"""The numpy oracle against transformers (Phi3ForCausalLM, PhimoeForCausalLM), and the HF
tokenizer against tokenizers.

The oracle is only worth trusting if an independent implementation agrees with it: every tiny
variant, every test prompt (on the LongRoPE variants one shorter and one longer than the
original context, so both factor sets are compared), float32 and eager attention on both sides.

PhiMoE's long prompts are compared with transformers' PhimoeForCausalLM told the sequence
length, as transformers 4.x and the hub's remote code compute it: transformers 5 drops it and
always uses the short factors (pinned in tests/test_oracle_phimoe.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from phi_quant.model.source import open_model  # noqa: E402
from phi_quant.reference import ReferenceModel  # noqa: E402
from phi_quant.testing.factory import ALL_VARIANTS, cached_checkpoint, copy_checkpoint, variant_spec  # noqa: E402
from phi_quant.testing.prompts import chat_prompt, test_prompts  # noqa: E402
from phi_quant.testing.transformers_oracle import hf_class, hf_logits  # noqa: E402

pytestmark = pytest.mark.oracle

TOLERANCE = 1e-4

_cache: dict[str, tuple] = {}


def _models(variant: str):
    """(source, oracle, transformers model, tokenizers.Tokenizer), built once per variant."""
    if variant not in _cache:
        path = cached_checkpoint(variant)
        src = open_model(path)
        hf = hf_class(src.config).from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
        _cache[variant] = (src, ReferenceModel.from_source(src), hf.eval(), src.hf_tokenizer())
    return _cache[variant]


_hf_logits = hf_logits

LONGROPE = [v for v in ALL_VARIANTS if variant_spec(v).longrope]


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_oracle_logits_match_transformers(variant):
    src, ref, hf, tok = _models(variant)
    lengths = []
    for prompt in test_prompts(variant):
        ids = tok.encode(prompt, add_special_tokens=False).ids
        lengths.append(len(ids))
        ours, theirs = ref.logits(ids), _hf_logits(hf, ids)
        assert ours.shape == (len(ids), src.config.vocab_size) and ours.dtype == np.float32
        diff = float(np.abs(ours - theirs).max())
        print(f"{variant} {len(ids):4d} tokens: max |dlogit| {diff:.2e}")
        assert diff <= TOLERANCE, (variant, prompt[:40], diff)
    orig = src.config.rope.original_max_position
    if src.config.rope.is_longrope:  # both factor sets were exercised
        assert min(lengths) <= orig < max(lengths), (lengths, orig)


@pytest.mark.parametrize("variant", LONGROPE)
def test_longrope_factor_choice_is_visible(variant):
    """Picking the wrong factor set moves the logits far beyond the tolerance (so the test above bites)."""
    src, ref, hf, tok = _models(variant)
    long_ids = tok.encode(test_prompts(variant)[-1], add_special_tokens=False).ids
    rope = src.config.rope
    wrong = dataclasses.replace(src.config, rope=dataclasses.replace(rope, original_max_position=len(long_ids)))
    wrong_logits = ReferenceModel(wrong, ref.w).logits(long_ids)
    assert np.abs(wrong_logits - _hf_logits(hf, long_ids)).max() > 100 * TOLERANCE


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_greedy_generation_matches_transformers(variant):
    src, ref, hf, tok = _models(variant)
    ids = tok.encode(test_prompts(variant)[0], add_special_tokens=False).ids
    ours = ref.generate(ids, max_new_tokens=6)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, use_cache=False,
                          eos_token_id=None, pad_token_id=src.config.pad_token_id)
    assert ours == out[0, len(ids):].tolist()


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_hf_tokenizer_agrees_with_tokenizers(variant):
    """transformers' AutoTokenizer and PreTrainedTokenizerFast produce the ids of tokenizer.json."""
    src, _, _, tok = _models(variant)
    auto = transformers.AutoTokenizer.from_pretrained(src.path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(src.path / "tokenizer.json"))
    for prompt in test_prompts(variant):
        want = tok.encode(prompt, add_special_tokens=False).ids
        assert auto.encode(prompt, add_special_tokens=False) == want, prompt
        assert fast.encode(prompt, add_special_tokens=False) == want, prompt
        assert auto.decode(want) == tok.decode(want, skip_special_tokens=False)
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Write one sentence about the sea."}]
    assert auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == chat_prompt(variant)
    for name in ("<|end|>", "<|user|>", "<|assistant|>") if "<|end|>" in auto.get_vocab() else ("<|im_end|>",):
        assert auto.convert_tokens_to_ids(name) == tok.token_to_id(name)


def test_sliding_window_mask_matches_transformers(tmp_path):
    """Phi-3-mini's sliding window (2047) never bites on short prompts; shrink it to 8 to compare the mask."""
    path = copy_checkpoint("phi3-mini", tmp_path / "sw", sliding_window=8)
    with open_model(path) as src:
        ref, tok = ReferenceModel.from_source(src), src.hf_tokenizer()
    hf = transformers.Phi3ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok.encode(test_prompts("phi3-mini")[0], add_special_tokens=False).ids
    ours = ref.logits(ids)
    assert np.abs(ours - _hf_logits(hf, ids)).max() <= TOLERANCE
    full = _models("phi3-mini")[1].logits(ids)
    assert np.abs(ours[:8] - full[:8]).max() < TOLERANCE < np.abs(ours[8:] - full[8:]).max()


@pytest.mark.parametrize("variant", ["phi3.5-longrope", "phi4-mini"])
def test_checkpoint_saved_by_transformers_reads_back(variant, tmp_path):
    """A checkpoint written by this transformers (rope_parameters, "dtype", its own safetensors writer)."""
    path = cached_checkpoint(variant)
    model = transformers.Phi3ForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path)
    with open_model(tmp_path) as saved, open_model(path) as original:
        assert saved.config.rope == original.config.rope
        assert saved.config.tie_word_embeddings == original.config.tie_word_embeddings
        assert [i.name for i in saved.tensor_infos()] == [i.name for i in original.tensor_infos()]
        for a, b in zip(saved.tensors(), original.tensors()):
            assert a.dtype == b.dtype == "bf16"
            np.testing.assert_array_equal(a.raw(), b.raw())


def test_oracle_accepts_split_weights_and_tied_heads():
    """Weights given as separate q/k/v and gate/up (as some exporters hold them) fuse back exactly."""
    src, ref, _, tok = _models("phi4-mini")
    weights = {t.name: t.to_float32() for t in src.tensors(split=True)}
    assert "lm_head.weight" not in weights and "model.layers.0.self_attn.k_proj.weight" in weights
    ids = tok.encode(test_prompts("phi4-mini")[0], add_special_tokens=False).ids
    np.testing.assert_array_equal(ReferenceModel(src.config, weights).logits(ids), ref.logits(ids))
    with pytest.raises(ValueError, match="token ids"):
        ref.logits([src.config.vocab_size])
    with pytest.raises(ValueError):
        ref.logits([])
    untied = dataclasses.replace(src.config, tie_word_embeddings=False)
    with pytest.raises(KeyError, match="lm_head"):
        ReferenceModel(untied, weights)


@pytest.mark.parametrize("variant", LONGROPE)
def test_longrope_boundary_is_sequence_longer_than_original(variant):
    """Exactly ``original_max_position`` tokens still use the short factors; one more switches to long."""
    src, ref, hf, tok = _models(variant)
    orig = src.config.rope.original_max_position
    ids = tok.encode(test_prompts(variant)[-1], add_special_tokens=False).ids[: orig + 1]
    for n in (orig, orig + 1):
        assert np.abs(ref.logits(ids[:n]) - _hf_logits(hf, ids[:n])).max() <= TOLERANCE
    # the first orig positions see different factors in the two runs (causal: only the factors differ)
    assert np.abs(ref.logits(ids[:orig]) - ref.logits(ids)[:orig]).max() > 100 * TOLERANCE
