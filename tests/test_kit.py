"""The conformance kit itself: the reference backend passes it, deliberately broken backends fail
exactly the checks that match their fault (asserted by test name), and ``run_kit`` reports one
named result per check from a separate process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from phi_quant.testing.kit import run_kit

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_SRC = ROOT / "plugins" / "reference"
VARIANT = "phi3-mini"  # the smallest tiny checkpoint (hidden 256, 512-token vocabulary)

# Broken backends built on the reference backend, each with one realistic fault.
FAKES = '''
import dataclasses, json, shutil
from pathlib import Path

import numpy as np

from phi_quant.errors import BadWeightsError, UnsupportedPrecisionError
from phi_quant.types import ExportResult, NullProgress
from phi_quant.hookspecs import hookimpl
from phi_quant_reference import plugin as ref


class Fake:
    """Delegates every hook to the reference backend under another name."""

    precisions = ("fp32", "int8", "int4")

    def __init__(self, name):
        self.name = name

    @hookimpl
    def backend_info(self):
        return dataclasses.replace(ref.backend_info(), name=self.name, distribution="")

    @hookimpl
    def supported_precisions(self):
        return [s for s in ref.supported_precisions() if s.precision in self.precisions]

    def _refuse(self, options):
        if options.precision not in self.precisions:
            raise UnsupportedPrecisionError(f"{self.name} has no {options.precision}")

    @hookimpl
    def quantize(self, tensor, options):
        self._refuse(options)
        return ref.quantize(tensor=tensor, options=options)

    @hookimpl
    def export(self, source, output_dir, options, progress):
        self._refuse(options)
        return ref.export(source=source, output_dir=output_dir, options=options, progress=progress)

    @hookimpl
    def load_model(self, path, options):
        return ref.load_model(path=path, options=options)


class NoisyLogits:
    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def logits(self, ids):
        out = self.model.logits(ids)
        return out + np.random.default_rng(0).normal(0, 3.0, out.shape).astype(np.float32)


class WrongFidelity(Fake):
    """int8 runs with its logits off (as if scales were misread); other precisions are fine."""

    @hookimpl
    def load_model(self, path, options):
        model = ref.load_model(path=path, options=options)
        scheme = json.loads((Path(path) / "reference.json").read_text())["scheme"]
        return NoisyLogits(model) if scheme.startswith("int8") else model


class NonAtomic(Fake):
    """Stages its files next to the destination and moves them in at the end: a failure strands them."""

    @hookimpl
    def export(self, source, output_dir, options, progress):
        self._refuse(options)
        staging = Path(output_dir).parent / (Path(output_dir).name + ".staging")
        staging.mkdir()
        result = ref.export(source=source, output_dir=staging, options=options, progress=progress)
        for item in staging.iterdir():
            shutil.move(str(item), str(Path(output_dir) / item.name))
        staging.rmdir()
        return result


class Lenient(Fake):
    """Declares fp32 only but exports whatever it is asked for."""

    precisions = ("fp32",)

    def _refuse(self, options):
        pass


class Careless(Fake):
    """Carries on past bad weights and ships what it has."""

    precisions = ("fp32",)

    @hookimpl
    def export(self, source, output_dir, options, progress):
        self._refuse(options)
        try:
            return ref.export(source=source, output_dir=output_dir, options=options, progress=progress)
        except BadWeightsError:
            return ExportResult(files=[], scheme="fp32")


class Silent(Fake):
    """Never reports progress."""

    precisions = ("fp32",)

    @hookimpl
    def export(self, source, output_dir, options, progress):
        self._refuse(options)
        return ref.export(source=source, output_dir=output_dir, options=options, progress=NullProgress())


class ExtraBos:
    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def tokenize(self, text, add_special_tokens=False):
        return [1] + self.model.tokenize(text, add_special_tokens)


class WrongTokens(Fake):
    """Its tokenizer prepends a BOS token the Hugging Face tokenizer does not."""

    precisions = ("fp32",)

    @hookimpl
    def load_model(self, path, options):
        return ExtraBos(ref.load_model(path=path, options=options))


class HookDisagrees(Fake):
    """Its quantize hook groups the embedding differently from what export writes (round to nearest)."""

    @hookimpl
    def quantize(self, tensor, options):
        self._refuse(options)
        if tensor.name == "model.embed_tokens.weight" and options.precision == "int4" and not options.recipe:
            options = dataclasses.replace(options, group_size=64)
        return ref.quantize(tensor=tensor, options=options)


class MissingPrecision(Fake):
    """Declares int4 but cannot export it."""

    def _refuse(self, options):
        if options.precision == "int4":
            raise UnsupportedPrecisionError("int4 is not implemented yet")
        super()._refuse(options)
'''

CHECKS = '''
from phi_quant.testing.kit import BackendConformance


class TestReference(BackendConformance):
    backend = "reference"
    precisions = ("fp32", "int8", "int4")


class TestWrongFidelity(BackendConformance):
    backend = "wrong-fidelity"


class TestNonAtomic(BackendConformance):
    backend = "non-atomic"


class TestMissingPrecision(BackendConformance):
    backend = "missing-precision"


class TestLenient(BackendConformance):
    backend = "lenient"


class TestCareless(BackendConformance):
    backend = "careless"


class TestSilent(BackendConformance):
    backend = "silent"


class TestWrongTokens(BackendConformance):
    backend = "wrong-tokens"


class TestHookDisagrees(BackendConformance):
    backend = "hook-disagrees"
'''


@pytest.fixture
def reference_importable(monkeypatch):
    """``phi_quant_reference`` importable even where the plugin is not installed (the core's tox env)."""
    try:
        import phi_quant_reference  # noqa: F401
    except ImportError:
        monkeypatch.syspath_prepend(str(REFERENCE_SRC))


@pytest.fixture
def kit_outcomes(pytester, manager, reference_importable):
    """Run the kit in-process on the reference backend and the fake backends; {test id: outcome}."""
    from phi_quant_reference import plugin as reference

    pytester.makepyfile(fakes=FAKES, test_checks=CHECKS)
    pytester.syspathinsert()
    import fakes

    manager.register(reference, "reference")
    manager.register(fakes.WrongFidelity("wrong-fidelity"), "wrong-fidelity")
    manager.register(fakes.NonAtomic("non-atomic"), "non-atomic")
    manager.register(fakes.MissingPrecision("missing-precision"), "missing-precision")
    manager.register(fakes.Lenient("lenient"), "lenient")
    for cls, name in ((fakes.Careless, "careless"), (fakes.Silent, "silent"), (fakes.WrongTokens, "wrong-tokens"),
                      (fakes.HookDisagrees, "hook-disagrees")):
        manager.register(cls(name), name)
    try:
        run = pytester.inline_run("-p", "phi_quant", "--phi-quant-variants", VARIANT, "--phi-quant-skip-streaming")
    finally:
        sys.modules.pop("fakes", None)
    outcomes = {}
    for report in run.getreports("pytest_runtest_logreport"):
        test_id = report.nodeid.split("::", 1)[1]
        if report.when == "call" or report.outcome != "passed":
            outcomes[test_id] = "failed" if report.failed else outcomes.get(test_id, report.outcome)
    return outcomes


def _ids(outcomes, cls, outcome):
    return sorted(k.split("::", 1)[1] for k, v in outcomes.items() if k.startswith(cls + "::") and v == outcome)


def test_reference_passes_and_broken_backends_fail_the_matching_checks_by_name(kit_outcomes):
    v = VARIANT
    assert _ids(kit_outcomes, "TestReference", "failed") == []
    passed = _ids(kit_outcomes, "TestReference", "passed")
    for check in ("export", "progress", "load", "tokenizer", "fidelity"):
        for p in ("fp32", "int8", "int4"):
            assert f"test_{check}[reference-{v}-{p}]" in passed
    assert {f"test_kl_order[reference-{v}]", "test_backend_info", "test_refuses_existing_output",
            "test_atomic_output[reference-int4]", "test_rejects_nan_weights[reference-int8]",
            "test_rejects_inf_weights[reference-fp32]", "test_quantize[reference-int4]",
            "test_refuses_undeclared_precision[reference-int3]"} <= set(passed)

    # Wrong fidelity: exactly the int8 fidelity check (and the order it breaks) fail.
    assert _ids(kit_outcomes, "TestWrongFidelity", "failed") == [
        f"test_fidelity[wrong-fidelity-{v}-int8]", f"test_kl_order[wrong-fidelity-{v}]"]

    # Non-atomic: the atomic-output check fails for every precision, and nothing else.
    assert _ids(kit_outcomes, "TestNonAtomic", "failed") == [
        f"test_atomic_output[non-atomic-{p}]" for p in ("fp32", "int4", "int8")]

    # Missing precision: every check that needs an int4 export or quantize fails; the rest pass.
    failed = _ids(kit_outcomes, "TestMissingPrecision", "failed")
    assert failed == sorted(
        [f"test_{c}[missing-precision-{v}-int4]" for c in ("export", "fidelity", "load", "progress", "tokenizer")]
        + [f"test_{c}[missing-precision-int4]" for c in
           ("atomic_output", "quantize", "rejects_inf_weights", "rejects_nan_weights")]
        + [f"test_kl_order[missing-precision-{v}]", f"test_hook_matches_export[missing-precision-{v}-int4]"]
        + [f"test_recipe[missing-precision-{v}-int4-{r}]" for r in ("clip", "hqq")]
    )
    assert f"test_export[missing-precision-{v}-fp32]" in _ids(kit_outcomes, "TestMissingPrecision", "passed")

    # Lenient: accepting precisions it does not declare fails the refusal check for each of them.
    assert _ids(kit_outcomes, "TestLenient", "failed") == [
        f"test_refuses_undeclared_precision[lenient-{p}]" for p in ("bf16", "fp16", "int4", "int8")]
    assert "test_refuses_undeclared_precision[lenient-int3]" in _ids(kit_outcomes, "TestLenient", "passed")

    # One fault each, one failing check each.
    assert _ids(kit_outcomes, "TestCareless", "failed") == [
        "test_rejects_inf_weights[careless-fp32]", "test_rejects_nan_weights[careless-fp32]"]
    assert _ids(kit_outcomes, "TestSilent", "failed") == [f"test_progress[silent-{v}-fp32]"]
    assert _ids(kit_outcomes, "TestWrongTokens", "failed") == [f"test_tokenizer[wrong-tokens-{v}-fp32]"]
    assert _ids(kit_outcomes, "TestHookDisagrees", "failed") == [f"test_hook_matches_export[hook-disagrees-{v}-int4]"]
    assert {f"test_hook_matches_export[reference-{v}-{p}]" for p in ("fp32", "int8", "int4")} | {
        f"test_recipe[reference-{v}-int4-{r}]" for r in ("clip", "hqq", "awq+gptq")} <= set(passed)
    # The fakes have no tensor_plan hook: the calibrated recipe is skipped for them, never failed.
    assert f"test_recipe[missing-precision-{v}-int4-awq+gptq]" in _ids(kit_outcomes, "TestMissingPrecision", "skipped")


HOARDER = '''
"""Copies every tensor of the stream before writing anything: correct output, memory grows with the model."""
import dataclasses

from phi_quant.hookspecs import hookimpl
from phi_quant_reference import plugin as ref


@hookimpl
def backend_info():
    return dataclasses.replace(ref.backend_info(), name="hoarder")


@hookimpl
def supported_precisions():
    return [s for s in ref.supported_precisions() if s.precision == "fp16"]


@hookimpl
def export(source, output_dir, options, progress):
    hoard = [t.raw().copy() for t in source.tensors()]
    return ref.export(source=source, output_dir=output_dir, options=options, progress=progress)
'''


def test_a_backend_that_holds_the_model_fails_the_streaming_check(pytester, manager, reference_importable,
                                                                  monkeypatch):
    pytester.makepyfile(hoarder=HOARDER, test_hoarder=(
        "from phi_quant.testing.kit import BackendConformance\n\n\n"
        "class TestHoarder(BackendConformance):\n    backend = 'hoarder'\n"))
    pytester.syspathinsert()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(pytester.path), str(REFERENCE_SRC)]))
    import hoarder

    manager.register(hoarder, "hoarder")
    try:
        run = pytester.inline_run("-p", "phi_quant", "-k", "test_streaming")
    finally:
        sys.modules.pop("hoarder", None)
    failed = [r for r in run.getreports("pytest_runtest_logreport") if r.failed]
    assert [r.nodeid.split("::")[-1] for r in failed] == ["test_streaming[hoarder-fp16]"]
    message = failed[0].longrepr.reprcrash.message
    assert "peak RSS grew by" in message and "> 600 MiB" in message, message


def test_run_kit_reports_each_check_by_name_from_a_subprocess(tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([str(REFERENCE_SRC), os.environ.get("PYTHONPATH", "")])}
    results = run_kit("reference", variants=[VARIANT], precisions=["fp32", "int4"], streaming=False,
                      plugin="phi_quant_reference.plugin", env=env, timeout=600)
    by_name = {r.name: r for r in results}
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    assert {f"export[reference-{VARIANT}-fp32]", f"fidelity[reference-{VARIANT}-int4]",
            "atomic_output[reference-int4]", "refuses_existing_output", f"kl_order[reference-{VARIANT}]"} <= set(by_name)
    assert "KL mean" in by_name[f"fidelity[reference-{VARIANT}-int4]"].message
    assert by_name["streaming[reference-int4]"].message.startswith("skipped")


def test_run_kit_names_a_missing_backend_in_every_failed_check():
    results = run_kit("no-such-backend", streaming=False, timeout=300)
    assert results and not any(r.passed for r in results)
    assert "backend_info" in {r.name for r in results}
    assert all("no-such-backend" in r.message for r in results)


def test_every_kit_check_is_documented_for_authors():
    from phi_quant.testing import kit

    checks = sorted(n for n in dir(kit.BackendConformance) if n.startswith("test_"))
    assert len(checks) >= 14
    guide = (ROOT / "docs" / "plugin-authoring.md").read_text()
    assert [c for c in checks if f"`{c}" not in guide] == [], "add the check to the kit table of docs/plugin-authoring.md"
    assert [c for c in checks if f"``{c}``" not in kit.__doc__] == [], "add the check to phi_quant.testing.kit's docstring"
