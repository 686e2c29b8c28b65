"""The oracle cache: the same logits and greedy answers as the oracle itself, computed once, keyed by the model.

On a tiny checkpoint (milliseconds per pass); the real model goes through the same code in eval,
compare, the bench and the backends' real-model tests.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from phi_quant.fidelity import FidelityAccumulator, compare_logits
from phi_quant.model.source import open_model
from phi_quant.oracle_cache import NO_CACHE_ENV, OracleCache, model_key
from phi_quant.reference import ReferenceModel
from phi_quant.testing.factory import cached_checkpoint


@pytest.fixture()
def source(tmp_path):
    """A private copy of a tiny checkpoint (so its files can be touched)."""
    path = tmp_path / "model"
    shutil.copytree(cached_checkpoint("phi3-mini"), path)
    with open_model(path) as src:
        yield src


class Counting:
    """Wraps the oracle to count its forward passes."""

    def __init__(self, model):
        self.model, self.passes = model, 0

    def logits(self, ids):
        self.passes += 1
        return self.model.logits(ids)

    def generate(self, *a, **k):
        return self.model.generate(*a, **k)


def test_logits_are_the_oracles_and_read_back_from_disk(source, tmp_path):
    ids = source.hf_tokenizer().encode("The capital of France is Paris.").ids
    want = ReferenceModel.from_source(source).logits(ids)
    first = OracleCache(source, root=tmp_path / "cache")
    np.testing.assert_array_equal(first.logits(ids), want)
    assert (first.hits, first.misses) == (0, 1)
    again = OracleCache(source, root=tmp_path / "cache")
    np.testing.assert_array_equal(again.logits(ids), want)
    assert (again.hits, again.misses) == (1, 0) and again._model is None  # the oracle was never built
    assert len(list(first.dir.glob("logits-*.npy"))) == 1 and not list(first.dir.glob(".*"))  # no temporary left


def test_the_key_follows_the_checkpoint(source):
    key = model_key(source)
    assert key == model_key(source)
    weights = next(source.path.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert model_key(source) != key  # rewritten weights: a new key, old entries never read


def test_greedy_equals_the_oracles_with_or_without_a_proposal(source, tmp_path):
    ids = source.hf_tokenizer().encode("Once upon a time").ids
    ref = ReferenceModel.from_source(source)
    want = ref.generate(ids, 12)
    right, wrong = list(want), list(want[:4]) + [(want[4] + 1) % source.config.vocab_size] + list(want[5:])
    for proposal, most_passes in (((), 12), (right, 1), (wrong, 12 - 4), (right[:6], 7)):
        cache = OracleCache(source, root=tmp_path / f"c{len(proposal)}-{proposal[4] if proposal else 0}")
        cache._model = counting = Counting(ref)
        assert cache.greedy(ids, 12, proposal=proposal) == want, proposal
        assert counting.passes <= most_passes, (proposal, counting.passes)
    # an end token stops the answer, included last, as ReferenceModel.generate does
    stop = want[3]
    cache = OracleCache(source, root=tmp_path / "stop")
    assert cache.greedy(ids, 12, eos_ids=[stop], proposal=right) == ref.generate(ids, 12, eos_ids=[stop])


def test_the_cache_can_be_turned_off(source, tmp_path, monkeypatch):
    monkeypatch.setenv(NO_CACHE_ENV, "1")
    cache = OracleCache(source, root=tmp_path / "off")
    ids = [1, 2, 3]
    cache.logits(ids)
    cache.logits(ids)
    assert cache.misses == 2 and not (tmp_path / "off").exists()


def test_accumulated_statistics_equal_one_comparison():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((150, 97)).astype(np.float32) * 3
    cand = ref + rng.standard_normal(ref.shape).astype(np.float32) * 0.3
    acc = FidelityAccumulator()
    for a, b in ((0, 70), (70, 71), (71, 150)):
        acc.add(ref[a:b], cand[a:b])
    assert acc.report() == compare_logits(ref, cand)
    with pytest.raises(ValueError, match="no positions"):
        FidelityAccumulator().report()
