"""PhiMoE's oracle pieces against transformers: sparsemixer routing, the LongRoPE mscales, both
class names and config forms, and the transformers 5 LongRoPE behaviour the oracle departs from.

tests/test_oracle.py compares the whole forward pass on every prompt of the tiny PhiMoE.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from phi_quant.arch.oracle import sparsemixer  # noqa: E402
from phi_quant.model.source import open_model  # noqa: E402
from phi_quant.reference import ReferenceModel  # noqa: E402
from phi_quant.testing.factory import cached_checkpoint, copy_checkpoint  # noqa: E402
from phi_quant.testing.prompts import test_prompts  # noqa: E402
from phi_quant.testing.transformers_oracle import hf_logits, phimoe_without_long_factors  # noqa: E402

pytestmark = pytest.mark.oracle

TOLERANCE = 1e-4


def _hf(path):
    return transformers.PhimoeForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def tiny():
    path = cached_checkpoint("phimoe")
    src = open_model(path)
    tok = src.hf_tokenizer()
    ids = [tok.encode(p, add_special_tokens=False).ids for p in test_prompts("phimoe")]
    return src, ReferenceModel.from_source(src), _hf(path), ids


def _logits_cases() -> np.ndarray:
    rng = np.random.default_rng(7)
    rows = [rng.standard_normal(8) * s for s in (0.1, 1.0, 3.0) for _ in range(40)]
    rows += [np.zeros(8), -np.abs(rng.standard_normal(8)) - 1.0, np.full(8, 2.0)]
    rows.append([3.0, 2.99, 1.0, 0.5, -1.0, 0.0, 0.2, -2.0])  # the first pick shares its weight
    rows.append([3.0, 2.0, 1.995, 0.5, -1.0, 0.0, 1.99, -2.0])  # the second pick shares its weight
    return np.asarray(rows, dtype=np.float32)


@pytest.mark.parametrize("jitter", [0.01, 0.1])
def test_sparsemixer_matches_transformers(jitter):
    """Experts and weights equal transformers' eval-mode sparsemixer, near-ties and all-equal rows included."""
    from transformers.models.phimoe.modeling_phimoe import sparsemixer as hf_sparsemixer

    logits = _logits_cases()
    picks, weights = sparsemixer(logits, jitter)
    with torch.no_grad():
        w, e = hf_sparsemixer(torch.from_numpy(logits), jitter_eps=jitter, training=False)
    np.testing.assert_array_equal(picks, e.numpy())
    np.testing.assert_allclose(weights, w.numpy(), rtol=1e-6, atol=1e-7)
    assert (weights == 1.0).any() and (weights < 1.0).any()  # both branches: no near-tie, and a shared weight


def test_phimoe_router_sums_two_experts(tiny):
    """On the tiny model most tokens' two weights are exactly 1 (summed, not averaged), a few share."""
    src, ref, _, ids = tiny
    weights = []
    route = ref.route
    ref.route = lambda layer, h: (lambda r: (weights.append(r[1]), r)[1])(route(layer, h))
    try:
        for i in ids:
            ref.logits(i)
    finally:
        ref.route = route
    w = np.concatenate(weights)
    assert w.shape[1] == 2 and (w == 1).mean() > 0.9 and (w < 1).any()


def test_transformers5_phimoe_keeps_the_short_factors(tiny):
    """transformers 5 computes long prompts with the short LongRoPE factors (and the long mscale):
    our oracle does not, and differs from it far beyond the tolerance. When transformers changes,
    this test says so and hf_logits' length-aware patch can go."""
    src, ref, hf, ids = tiny
    long_ids = max(ids, key=len)
    assert len(long_ids) > src.config.rope.original_max_position
    plain = hf_logits(hf, long_ids, length_aware=False)
    short_only = ReferenceModel(phimoe_without_long_factors(src.config), ref.w).logits(long_ids)
    assert np.abs(short_only - plain).max() <= TOLERANCE
    assert np.abs(ref.logits(long_ids) - plain).max() > 100 * TOLERANCE


def test_mscale_follows_the_factor_set(tmp_path, tiny):
    """With short_mscale != long_mscale, short prompts take the short one and long prompts the long one."""
    _, _, _, ids = tiny
    path = copy_checkpoint("phimoe", tmp_path / "mscale")
    import json

    cfg = json.loads((path / "config.json").read_text())
    cfg["rope_scaling"].update(short_mscale=1.35, long_mscale=1.05)
    (path / "config.json").write_text(json.dumps(cfg))
    with open_model(path) as src:
        ref = ReferenceModel.from_source(src)
        assert (src.config.rope.mscale(False), src.config.rope.mscale(True)) == (1.35, 1.05)
    hf = _hf(path)
    short_ids, long_ids = min(ids, key=len), max(ids, key=len)
    for i in (short_ids, long_ids):
        assert np.abs(ref.logits(i) - hf_logits(hf, i)).max() <= TOLERANCE
    swapped = dataclasses.replace(src.config, rope=dataclasses.replace(src.config.rope, short_mscale=1.05))
    assert np.abs(ReferenceModel(swapped, ref.w).logits(short_ids) - hf_logits(hf, short_ids)).max() > 100 * TOLERANCE


def test_checkpoint_saved_by_transformers_reads_back(tmp_path):
    """transformers 5 saves PhimoeForCausalLM with rope_parameters and per-expert tensors: same config, same bytes."""
    path = cached_checkpoint("phimoe")
    transformers.PhimoeForCausalLM.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(tmp_path)
    with open_model(tmp_path) as saved, open_model(path) as original:
        assert saved.config.architecture == "PhimoeForCausalLM" and original.config.architecture == "PhiMoEForCausalLM"
        assert "rope_parameters" in saved.config.raw and "rope_scaling" in original.config.raw
        assert saved.config.arch is original.config.arch
        assert saved.config.rope == original.config.rope
        assert (saved.config.num_experts, saved.config.attention_bias, saved.config.lm_head_bias) == (4, True, True)
        assert [i.name for i in saved.tensor_infos()] == [i.name for i in original.tensor_infos()]
        for a, b in zip(saved.tensors(), original.tensors()):
            np.testing.assert_array_equal(a.raw(), b.raw())
