"""mlx-lm against the numpy oracle where the conformance kit cannot look: its own cached greedy
generation loop, and what plain ``mlx_lm.load`` computes for LongRoPE models with and without
``--context-length``. (Every variant x precision through ``load_model`` = ``mlx_lm.load`` /
``mlx_lm.generate`` against the declared thresholds is the kit's ``test_fidelity``/``test_load``,
run in test_conformance.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from phi_quant.fidelity import compare_logits
from phi_quant.testing.factory import VARIANTS
from phi_quant_mlx import plugin

def original_context(source) -> int | None:
    """The LongRoPE original context of a source, None without LongRoPE."""
    rope = source.config.rope
    return int(rope.original_max_position) if rope.is_longrope else None


def _report(ref: list[np.ndarray], got: list[np.ndarray]):
    return compare_logits(np.concatenate(ref), np.concatenate(got))


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
