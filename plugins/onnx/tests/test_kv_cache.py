"""Generation through onnxruntime-genai's KV cache equals fresh full-sequence runs.

Tokens are fed one at a time with ``Generator.append_tokens`` (teacher forcing with the oracle's
greedy continuation), so each row after the first reads every earlier position from the cache.
"""

from __future__ import annotations

import numpy as np
import pytest

from phi_quant.testing.factory import VARIANTS

from phi_quant_onnx import plugin

STEPS = 8


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_steps_equal_full_sequence(variant, exported, oracle):
    out, _ = exported(variant, "fp32")
    ref, rows = oracle(variant)
    _, ids, _ = rows[0]
    cont = ref.generate(ids, max_new_tokens=STEPS)
    full_ids = list(ids) + list(cont)
    model = plugin.load_model(path=out, options={})
    try:
        inc = model.incremental_logits(ids, cont)  # positions len(ids)-1 .. len(full)-1
        fresh = model.logits(full_ids)[len(ids) - 1 :]
        want = ref.logits(full_ids)[len(ids) - 1 :]
    finally:
        model.close()
    assert inc.shape == want.shape
    assert np.abs(inc - fresh).max() <= 1e-4, "a cached step differs from a fresh full-sequence run in genai"
    assert np.abs(inc - want).max() <= 1e-3, "a cached step differs from the oracle"
    assert (inc.argmax(-1) == want.argmax(-1)).all()


def test_longrope_crossing_keeps_short_factor_keys(exported, oracle, sources):
    """Pinned, documented divergence (docs/fidelity.md): a generation that crosses the original
    context switches new positions to the long factors but keeps the keys cached with the short
    ones, as onnxruntime-genai's builder graph does; transformers re-encodes everything."""
    variant = "phi3.5-longrope"
    orig = sources(variant).config.rope.original_max_position
    ref, rows = oracle(variant)
    long_ids = max((ids for _, ids, _ in rows), key=len)
    prompt, cont = list(long_ids[: orig - 4]), list(long_ids[orig - 4 : orig + 4])
    out, _ = exported(variant, "fp32")
    model = plugin.load_model(path=out, options={})
    try:
        inc = model.incremental_logits(prompt, cont)
        fresh_short = [model.logits(prompt + cont[:i])[-1] for i in range(len(cont) + 1)]
    finally:
        model.close()
    within = len(cont) - 4  # rows whose whole sequence still fits the original context: identical
    assert np.abs(inc[: within + 1] - np.stack(fresh_short[: within + 1])).max() <= 1e-4
    crossed = np.abs(inc[within + 1 :] - np.stack(fresh_short[within + 1 :])).max()
    assert crossed > 1e-2, "crossing the original context no longer diverges: update docs/fidelity.md"


def test_sliding_window_matches_transformers_semantics(exported, sources):
    """phi3-mini's sliding_window (2047) becomes GroupQueryAttention's local_window_size: a query
    sees that many keys including itself, as transformers 5 (and the oracle) mask."""
    from dataclasses import replace

    from phi_quant.reference import ReferenceModel

    src = sources("phi3-mini")
    window = src.config.sliding_window
    ids = [int(x) for x in np.random.default_rng(0).integers(3, 400, window + 40)]
    out, _ = exported("phi3-mini", "fp32")
    model = plugin.load_model(path=out, options={})
    try:
        got = model.logits(ids)[-48:]
    finally:
        model.close()
    ref = ReferenceModel.from_source(src)
    want = ref.logits(ids)[-48:]
    assert np.abs(got - want).max() <= 1e-3
    unwindowed = ReferenceModel(replace(src.config, sliding_window=None), ref.w).logits(ids)[-48:]
    assert np.abs(unwindowed - want).max() > 1e-3  # the window is really exercised
