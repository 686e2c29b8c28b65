"""Every tiny variant x precision: exported, loaded by ``mlx_lm.load``, run by mlx-lm, compared
with the numpy oracle on the shared prompts within the thresholds the plugin declares."""

from __future__ import annotations

import numpy as np
import pytest

from phi_quant.fidelity import compare_logits
from phi_quant.testing.factory import VARIANTS
from phi_quant_mlx import plugin

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")


def original_context(source) -> int | None:
    """The LongRoPE original context of a source, None without LongRoPE."""
    rope = source.config.rope
    return int(rope.original_max_position) if rope.is_longrope else None


def _report(ref: list[np.ndarray], got: list[np.ndarray]):
    return compare_logits(np.concatenate(ref), np.concatenate(got))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fidelity_and_generation(variant, precision, exported, prompt_ids, oracle_logits):
    """Default load policy: LongRoPE factors chosen per sequence length, as transformers does."""
    out, _ = exported(variant, precision)
    model = plugin.load_model(path=out, options={})
    try:
        got = [model.logits(ids) for ids in prompt_ids(variant)]
        text = model.generate("Hello", max_new_tokens=4)
    finally:
        model.close()
    for g, r in zip(got, oracle_logits(variant)):
        assert g.shape == r.shape and g.dtype == np.float32
    rep = _report(oracle_logits(variant), got)
    thr = plugin.THRESHOLDS[precision]
    msg = f"{variant}/{precision}: KL {rep.kl_mean:.3g} top1 {rep.top1_agreement:.4f} max|d| {rep.max_abs_diff:.3g}"
    assert rep.kl_mean <= thr.kl_max, msg
    assert rep.top1_agreement >= thr.top1_min, msg
    if thr.max_abs_logit is not None:
        assert rep.max_abs_diff <= thr.max_abs_logit, msg
    assert isinstance(text, str) and text, f"mlx_lm.generate returned {text!r}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_fp32_greedy_tokens_equal_oracle(variant, sources, exported, prompt_ids, reference):
    """mlx-lm's own generation loop (KV cache, greedy) yields the oracle's greedy tokens.

    Plain mlx-lm, so LongRoPE variants are exported for their original context (short factors)
    and generate within it. Padded vocabulary rows are masked on both sides (the plugin's
    ``mask_padding`` processor), as a random tiny model would otherwise pick them."""
    from mlx_lm import stream_generate

    orig = original_context(sources(variant))
    out, _ = exported(variant, "fp32", context_length=orig)
    ids = prompt_ids(variant)[0]
    steps = 8
    assert orig is None or len(ids) + steps <= orig
    model = plugin.load_model(path=out, options={"longrope": "config"})
    try:
        got = [int(r.token) for r in stream_generate(model.model, model.tokenizer, ids, max_tokens=steps,
                                                     logits_processors=[model.mask_padding])]
        n = model.tokenizer_size
        eos = set(model.tokenizer.eos_token_ids)
    finally:
        model.close()
    ref, want = reference(variant), []
    while len(want) < steps:
        nxt = int(np.argmax(ref.logits(list(ids) + want)[-1, :n]))
        want.append(nxt)
        if nxt in eos:
            break
    assert got == want, f"mlx {got} vs oracle {want}"


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v in ("phi3.5-longrope", "phi4-mini")])
def test_longrope_plain_mlx_lm(variant, sources, exported, prompt_ids, oracle_logits):
    """What plain ``mlx_lm.load`` computes from config.json, with and without ``--context-length``.

    Default export: long factors at every length, exact on prompts longer than the original
    context, far off on short ones. ``context_length <= original``: exact on short prompts.
    """
    orig = original_context(sources(variant))
    pairs = list(zip(prompt_ids(variant), oracle_logits(variant)))
    short = [(i, r) for i, r in pairs if len(i) <= orig]
    long = [(i, r) for i, r in pairs if len(i) > orig]
    assert short and long, "the shared prompts must include short and long ones"
    thr = plugin.THRESHOLDS["fp32"]

    def measure(path, subset):
        m = plugin.load_model(path=path, options={"longrope": "config"})
        try:
            return _report([r for _, r in subset], [m.logits(i) for i, _ in subset])
        finally:
            m.close()

    default_dir, res = exported(variant, "fp32")
    assert res.details["longrope_factors"] == "long"
    on_long = measure(default_dir, long)
    assert on_long.max_abs_diff <= thr.max_abs_logit and on_long.top1_agreement == 1.0
    on_short = measure(default_dir, short)
    assert on_short.max_abs_diff > 100 * thr.max_abs_logit, "mlx-lm no longer diverges on short prompts: update docs"

    short_dir, res = exported(variant, "fp32", context_length=orig)
    assert res.details["longrope_factors"] == "short"
    fixed = measure(short_dir, short)
    assert fixed.max_abs_diff <= thr.max_abs_logit and fixed.top1_agreement == 1.0, fixed
