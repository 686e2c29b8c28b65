"""Fidelity statistics: values checked against hand-computed numbers, not just against themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phi_quant.fidelity import EVAL_TEXT, FidelityReport, compare_logits, log_softmax, perplexity


def test_identical_logits_are_perfect():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 50)).astype(np.float32) * 5
    r = compare_logits(a, a.copy())
    assert isinstance(r, FidelityReport)
    assert r.kl_mean == 0.0 and r.kl_max == 0.0 and r.max_abs_diff == 0.0
    assert r.top1_agreement == 1.0 and r.cosine_mean == pytest.approx(1.0, abs=1e-12) and r.positions == 7


def test_kl_matches_a_hand_computation_and_has_the_right_direction():
    p_logits = np.log(np.array([[0.7, 0.2, 0.1]]))
    q_logits = np.log(np.array([[0.1, 0.3, 0.6]]))
    want = 0.7 * math.log(0.7 / 0.1) + 0.2 * math.log(0.2 / 0.3) + 0.1 * math.log(0.1 / 0.6)
    r = compare_logits(p_logits, q_logits)
    assert r.kl_mean == pytest.approx(want, rel=1e-12)
    reverse = 0.1 * math.log(0.1 / 0.7) + 0.3 * math.log(0.3 / 0.2) + 0.6 * math.log(0.6 / 0.1)
    assert compare_logits(q_logits, p_logits).kl_mean == pytest.approx(reverse, rel=1e-12)
    assert r.top1_agreement == 0.0


def test_statistics_per_position():
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    cand = np.array([[3.0, 1.0, 0.0], [2.5, 2.0, 1.0]])  # second position changes its argmax
    r = compare_logits(ref, cand)
    assert r.top1_agreement == 0.5 and r.max_abs_diff == 2.5
    kl2 = float(np.sum(np.exp(log_softmax(ref[1])) * (log_softmax(ref[1]) - log_softmax(cand[1]))))
    assert r.kl_max == pytest.approx(kl2) and r.kl_mean == pytest.approx(kl2 / 2)
    cos2 = ref[1] @ cand[1] / np.linalg.norm(ref[1]) / np.linalg.norm(cand[1])
    assert r.cosine_mean == pytest.approx((1 + cos2) / 2)


def test_shift_invariance_and_no_overflow_with_huge_logits():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 1000)).astype(np.float32) * 3000  # exp() of these overflows float32/64
    r = compare_logits(a, a + 17.0)
    assert r.kl_mean == pytest.approx(0.0, abs=1e-9) and r.top1_agreement == 1.0
    assert r.max_abs_diff == pytest.approx(17.0, rel=1e-3)
    assert np.isfinite(compare_logits(a, a[:, ::-1]).kl_mean)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        compare_logits(np.zeros((3, 10)), np.zeros((3, 11)))


def test_perplexity_values():
    vocab = 40
    assert perplexity(np.zeros((5, vocab)), [1, 2, 3, 4, 5]) == pytest.approx(vocab)
    logits = np.log(np.array([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]))
    # predicts ids[1]=1 with 0.5 and ids[2]=0 with 0.25; the last row predicts nothing
    assert perplexity(logits, [0, 1, 0]) == pytest.approx(math.exp(-(math.log(0.5) + math.log(0.25)) / 2))
    with pytest.raises(ValueError):
        perplexity(np.zeros((2, 3)), [0, 1, 2])


def test_bundled_eval_text():
    assert 1500 < len(EVAL_TEXT.encode()) < 20000
    assert EVAL_TEXT.count(".") > 10 and "\ufffd" not in EVAL_TEXT


def test_text_windows_are_consecutive_and_drop_a_lone_last_token():
    from phi_quant.fidelity import text_windows

    assert text_windows(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert text_windows(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert text_windows(list(range(3)), 512) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="at least 2"):
        text_windows([1, 2, 3], 1)


def test_windowed_nll_scores_each_window_from_its_own_start():
    from phi_quant.fidelity import text_windows, token_nll, windowed_nll

    vocab = 7
    rng = np.random.default_rng(3)
    table = rng.standard_normal((vocab, vocab))

    def logits_of(ids):  # a bigram model that also sees the position inside the window
        return table[np.asarray(ids)] + 0.1 * np.arange(len(ids))[:, None] * np.eye(vocab)[0]

    ids = list(rng.integers(0, vocab, size=11))
    windows = text_windows(ids, 4)
    nll = windowed_nll(logits_of, windows)
    assert nll.size == sum(len(w) - 1 for w in windows) == 8
    want = np.concatenate([token_nll(logits_of(w), w) for w in windows])
    np.testing.assert_allclose(nll, want, rtol=1e-6)
    assert perplexity(logits_of(ids[:4]), ids[:4]) == pytest.approx(float(np.exp(nll[:3].mean())), rel=1e-6)
