"""Quality checks on the real model: a backend's exports of ``real:smollm2`` against the fp32 oracle.

The conformance kit (:mod:`phi_quant.testing.kit`) proves the plumbing on tiny random checkpoints;
this proves what a user sees on a trained one, in the backend's own runtime. A backend's suite
runs it by subclassing :class:`RealModelFidelity` with bounds taken from its measurements
(``docs/fidelity.md``, ``bench/real_fidelity.py``)::

    from phi_quant.testing.real_kit import RealModelFidelity
    from phi_quant.types import FidelityThresholds

    class TestRealModel(RealModelFidelity):
        backend = "mybackend"
        thresholds = {"fp16": FidelityThresholds(kl_max=1e-4, top1_min=0.99), ...}

==============================  ==================================================================
``test_real_fidelity``          KL(oracle‖export) and top-1 agreement on the first
                                :data:`TEST_TOKENS` tokens of the evaluation text, per precision of
                                ``thresholds``
``test_real_answer``            the export's greedy chat answer to "What is the capital of
                                France?" is the oracle's, word for word, per precision of
                                ``answer_precisions``
==============================  ==================================================================

Each precision is exported once per session (the ``real_exports`` fixture, shared with the
backend's other tests) and loaded once per class; the oracle's logits and answer come from the
oracle cache, so a session pays the numpy oracle once at most.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pytest

from ..answers import ANSWER_TOKENS, FRANCE, oracle_answer
from ..fidelity import compare_logits
from ..types import FidelityThresholds

__all__ = ["RealModelFidelity", "TEST_TOKENS", "test_window"]

#: Tokens of the evaluation text the tests score: a few hundred positions, seconds per runtime.
TEST_TOKENS = 256


def test_window(source: Any, tokens: int = TEST_TOKENS) -> list[int]:
    """The first ``tokens`` ids of :func:`phi_quant.texts.evaluation_text` (run as one sequence from position 0)."""
    from ..texts import evaluation_text

    return source.hf_tokenizer().encode(evaluation_text().text, add_special_tokens=False).ids[:tokens]


test_window.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test


class RealModelFidelity:
    """Subclass (as ``Test...``) and set :attr:`backend` and :attr:`thresholds`."""

    #: The backend's CLI name.
    backend: str = ""
    #: The real model (``real:<model>``).
    model: str = "smollm2"
    #: Bounds per precision on :func:`test_window`; the docs' measurement belongs in a comment next to each.
    thresholds: Mapping[str, FidelityThresholds] = {}
    #: Precisions whose greedy answer to :data:`phi_quant.answers.FRANCE` must equal the oracle's.
    answer_precisions: Sequence[str] = ("fp16", "int8")

    def export_options(self, precision: str) -> dict[str, Any]:
        """Extra ``ExportOptions`` fields for an export (default: none)."""
        return {}

    def pytest_generate_tests(self, metafunc: Any) -> None:
        if "precision" not in metafunc.fixturenames:
            return
        wanted = self.answer_precisions if metafunc.function.__name__ == "test_real_answer" else list(self.thresholds)
        metafunc.parametrize("precision", list(wanted), ids=[f"{self.backend}-{p}" for p in wanted], scope="class")

    @pytest.fixture(scope="class")
    @classmethod
    def real_models(cls, request: Any, real_sources: Any, real_exports: Any) -> Any:
        """``real_models(precision)``: the export loaded in the backend's runtime, once per class."""
        from ..plugins import get_manager

        owner = cls()
        backend = get_manager().get(owner.backend)
        loaded: dict[str, Any] = {}

        def get(precision: str) -> Any:
            if precision not in loaded:
                path = real_exports(owner.backend, precision, owner.model, **owner.export_options(precision))
                loaded[precision] = backend.load_model(path, {})
            return loaded[precision]

        yield get
        for model in loaded.values():
            model.close()

    def test_real_fidelity(self, precision: str, real_models: Any, real_sources: Any, real_oracle: Any,
                           record_property: Any) -> None:
        thr = self.thresholds[precision]
        source, oracle = real_sources(self.model), real_oracle(self.model)
        ids = test_window(source)
        got = np.asarray(real_models(precision).logits(ids), dtype=np.float32)
        r = compare_logits(oracle.logits(ids), got)
        result = (f"KL mean {r.kl_mean:.3g} (max {r.kl_max:.3g}), top-1 {r.top1_agreement:.4f}, "
                  f"max |dlogit| {r.max_abs_diff:.3g} over {r.positions} positions")
        record_property("result", result)
        print(f"{self.backend} {precision} real:{self.model}: {result}")
        problems = []
        if not r.kl_mean <= thr.kl_max:
            problems.append(f"KL mean {r.kl_mean:.3g} > {thr.kl_max:.3g}")
        if not r.top1_agreement >= thr.top1_min:
            problems.append(f"top-1 {r.top1_agreement:.4f} < {thr.top1_min:.4f}")
        if thr.max_abs_logit is not None and not r.max_abs_diff <= thr.max_abs_logit:
            problems.append(f"max |dlogit| {r.max_abs_diff:.3g} > {thr.max_abs_logit:.3g}")
        assert not problems, f"{self.backend} {precision} on real:{self.model}: {'; '.join(problems)} ({result})"

    def test_real_answer(self, precision: str, real_models: Any, real_sources: Any, real_oracle: Any,
                         record_property: Any) -> None:
        source, oracle = real_sources(self.model), real_oracle(self.model)
        got = real_models(precision).generate(FRANCE, max_new_tokens=ANSWER_TOKENS, chat=True).strip()
        want = oracle_answer(oracle, source, FRANCE, proposal=got).strip()
        record_property("result", f"{got!r}")
        print(f"{self.backend} {precision} real:{self.model} answers {got!r}")
        assert got == want, f"{self.backend} {precision} answers {got!r}; the fp32 oracle answers {want!r}"
