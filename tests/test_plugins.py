"""The plugin manager: discovery through entry points, isolation of broken plugins, the allow-list,
the hook-contract version check, and typed per-backend calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from phi_quant import plugins
from phi_quant.cli import cli
from phi_quant.errors import BackendNotInstalledError, PluginError, UnsupportedPrecisionError
from phi_quant.types import HOOK_CONTRACT_VERSION, ExportOptions, HardwareReport

GOOD_PLUGIN = '''
from phi_quant.hookspecs import hookimpl
from phi_quant.types import BackendInfo, HardwareReport, PrecisionSpec

@hookimpl
def backend_info():
    return BackendInfo(name="{name}", format="fake", runtime="none", hook_contract="{contract}")

@hookimpl
def supported_precisions():
    return [PrecisionSpec("int4", "fake-q4"), PrecisionSpec("fp16", "fake-f16")]

@hookimpl
def detect_hardware():
    return HardwareReport(backend="{name}", available=True)
'''


@pytest.fixture
def site(tmp_path, monkeypatch, plugin_dist):
    """A temporary site directory with a good, a broken, a typo and an old-contract plugin."""
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin_dist(tmp_path, "phi-quant-fakegood", "1.2.3", "fakegood", "pq_fakegood",
              GOOD_PLUGIN.format(name="fakegood", contract="1.4"))
    plugin_dist(tmp_path, "phi-quant-fakebroken", "0.1", "fakebroken", "pq_fakebroken",
              "import a_module_that_does_not_exist_anywhere\n")
    plugin_dist(tmp_path, "phi-quant-faketypo", "0.1", "faketypo", "pq_faketypo",
              GOOD_PLUGIN.format(name="faketypo", contract="1.0")
              + "\n@hookimpl\ndef exprot(source, output_dir):\n    pass\n")
    plugin_dist(tmp_path, "phi-quant-fakeold", "0.9", "fakeold", "pq_fakeold",
              GOOD_PLUGIN.format(name="fakeold", contract="0.3"))
    return tmp_path


ALL_FAKES = "fakegood,fakebroken,faketypo,fakeold"


def test_hook_backend_info_discovery_fills_distribution_and_version(site):
    mgr = plugins.PhiQuant(env={"PHI_QUANT_PLUGINS": ALL_FAKES})
    assert mgr.names() == ["fakegood"]
    info = mgr.get("fakegood").info
    assert (info.distribution, info.version, info.hook_contract) == ("phi-quant-fakegood", "1.2.3", "1.4")
    assert info.install_hint == "pip install phi-quant-fakegood"


def test_broken_plugins_are_reported_by_name_and_others_keep_working(site):
    mgr = plugins.PhiQuant(env={"PHI_QUANT_PLUGINS": ALL_FAKES})
    failures = {f.name: f for f in mgr.failures()}
    assert set(failures) == {"fakebroken", "faketypo", "fakeold"}
    assert failures["fakebroken"].distribution == "phi-quant-fakebroken"
    assert "a_module_that_does_not_exist_anywhere" in failures["fakebroken"].error
    assert "exprot" in failures["faketypo"].error
    assert "hook contract 0.3" in failures["fakeold"].error and HOOK_CONTRACT_VERSION in failures["fakeold"].error
    # a refused plugin leaves no hook implementations behind
    assert all(impl.plugin_name == "fakegood" for impl in mgr.pm.hook.backend_info.get_hookimpls())
    assert [p.precision for p in mgr.get("fakegood").precisions()] == ["int4", "fp16"]
    with pytest.raises(PluginError, match="fakeold.*hook contract 0.3"):
        mgr.get("fakeold")
    with pytest.raises(PluginError, match="could not be imported.*pip install --force-reinstall phi-quant-fakebroken"):
        mgr.get("fakebroken")


def test_cli_plugins_lists_failures_and_still_works(site, monkeypatch):
    monkeypatch.setenv("PHI_QUANT_PLUGINS", ALL_FAKES)
    old = plugins.reset_manager(None)
    try:
        res = CliRunner().invoke(cli, ["plugins", "--json"])
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert [b["name"] for b in data["backends"]] == ["fakegood"]
        assert data["backends"][0]["distribution"] == "phi-quant-fakegood"
        assert {f["name"] for f in data["failures"]} == {"fakebroken", "faketypo", "fakeold"}
        plugins.reset_manager(None)
        res = CliRunner().invoke(cli, ["plugins"])
        assert res.exit_code == 0
        assert "fakegood" in res.stdout and "fake-q4" in res.stdout
        assert "FAILED fakebroken (phi-quant-fakebroken)" in res.stderr
    finally:
        plugins.reset_manager(old)


@pytest.mark.parametrize(
    "allow, expected, failed",
    [
        ("fakegood", ["fakegood"], set()),
        ("phi-quant-fakegood, fakebroken", ["fakegood"], {"fakebroken"}),
        ("", [], set()),
    ],
)
def test_allow_list_environment_variable(site, allow, expected, failed):
    mgr = plugins.PhiQuant(env={"PHI_QUANT_PLUGINS": allow})
    assert mgr.names() == expected
    assert {f.name for f in mgr.failures()} == failed


def test_allow_list_names_the_variable_when_a_backend_is_filtered_out(site):
    mgr = plugins.PhiQuant(env={"PHI_QUANT_PLUGINS": ""})
    with pytest.raises(BackendNotInstalledError, match="PHI_QUANT_PLUGINS"):
        mgr.get("fakegood")


def test_get_loads_only_the_named_entry_point(site):
    mgr = plugins.PhiQuant(env={"PHI_QUANT_PLUGINS": ALL_FAKES})
    assert mgr.get("fakegood").name == "fakegood"
    assert mgr._failures == []  # the broken plugins were not even imported


def test_missing_known_backend_names_the_package(manager):
    with pytest.raises(BackendNotInstalledError, match="pip install phi-quant-openvino"):
        manager.get("openvino")
    with pytest.raises(BackendNotInstalledError, match="unknown backend 'nope'"):
        manager.get("nope")


def test_hook_supported_precisions_error_is_wrapped_with_plugin_name(manager, fakes):
    class Raising(fakes["MinimalBackend"]):
        from phi_quant.hookspecs import hookimpl

        @hookimpl
        def supported_precisions(self):
            raise ZeroDivisionError("boom")

    manager.register(Raising("bad"), "bad")
    manager.register(fakes["MinimalBackend"]("fine", ("int8",)), "fine")
    with pytest.raises(PluginError, match=r"plugin 'bad': supported_precisions failed: ZeroDivisionError: boom"):
        manager.get("bad").precisions()
    res = CliRunner().invoke(cli, ["plugins", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [p["precision"] for b in data["backends"] if b["name"] == "fine" for p in b["precisions"]] == ["int8"]
    assert any(f["name"] == "bad" and "ZeroDivisionError" in f["error"] for f in data["failures"])


def test_hook_export_lets_phi_quant_errors_through_unchanged(manager, fakes):
    class Refusing(fakes["MinimalBackend"]):
        from phi_quant.hookspecs import hookimpl

        @hookimpl
        def export(self, source, output_dir, options, progress):
            raise UnsupportedPrecisionError("no int2 here")

    b = manager.register(Refusing("refuser"), "refuser")
    with pytest.raises(UnsupportedPrecisionError, match="^no int2 here$"):
        b.export(None, Path("."), ExportOptions("int4"))


def test_backend_calls_only_its_own_hookimpl(manager, fakes):
    a = manager.register(fakes["MinimalBackend"]("a", ("fp16",)), "a")
    b = manager.register(fakes["MinimalBackend"]("b", ("int4", "int8")), "b")
    assert [p.scheme for p in a.precisions()] == ["a-fp16"]
    assert [p.scheme for p in b.precisions()] == ["b-int4", "b-int8"]
    with pytest.raises(UnsupportedPrecisionError, match="offers: int4, int8"):
        b.precision("fp32")
    with pytest.raises(PluginError, match="does not implement the 'quantize' hook"):
        a.quantize(None, ExportOptions("fp16"))


def test_hook_detect_hardware_failure_does_not_stop_doctor(manager, fakes, npy_backend):
    class Crashing(fakes["MinimalBackend"]):
        from phi_quant.hookspecs import hookimpl

        @hookimpl
        def detect_hardware(self):
            raise OSError("driver exploded")

    manager.register(Crashing("crashy"), "crashy")
    reports = manager.detect_hardware()
    assert isinstance(reports["npy"], HardwareReport) and reports["npy"].available
    assert isinstance(reports["crashy"], PluginError)
    res = CliRunner().invoke(cli, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert "driver exploded" in data["backends"]["crashy"]["error"]
    assert data["backends"]["npy"]["available"] is True
    assert data["machine"]["ram_total_bytes"] > 0
    assert {r["precision"] for r in data["fits"] if r["backend"] == "npy"} == {"fp32", "int8"}


def test_hook_contract_major_mismatch_refused_on_register(manager, fakes):
    with pytest.raises(PluginError, match="hook contract 2.0"):
        manager.register(fakes["MinimalBackend"]("future", contract="2.0"), "future")
    assert manager.pm.get_plugin("future") is None
    assert manager.names() == []


def test_registered_plugin_context_unregisters_after_errors(manager, fakes):
    with pytest.raises(RuntimeError):
        with plugins.registered_plugin(fakes["MinimalBackend"]("temp"), "temp"):
            assert plugins.get_manager().names() == ["temp"]
            raise RuntimeError("test body failed")
    assert plugins.get_manager().names() == []
    assert manager.pm.get_plugin("temp") is None


def test_duplicate_backend_name_is_refused(manager, fakes):
    manager.register(fakes["MinimalBackend"]("dup"), "first")
    with pytest.raises(PluginError, match="already provided"):
        manager.register(fakes["MinimalBackend"]("dup"), "second")
    manager.check_pending()


def _tensor(values):
    import numpy as np

    from phi_quant.model.tensors import SourceTensor, TensorRole

    arr = np.asarray(values, dtype=np.float32)
    return SourceTensor("model.layers.0.self_attn.o_proj.weight", TensorRole.O, 0, "f32", arr.shape, lambda: arr)


def test_hook_quantize_goes_to_the_named_backend_and_errors_name_the_tensor(manager, npy_backend, fakes):
    import numpy as np

    from phi_quant.errors import BadWeightsError

    class WrongType(fakes["MinimalBackend"]):
        from phi_quant.hookspecs import hookimpl

        @hookimpl
        def quantize(self, tensor, options):
            return {"not": "a QuantizedTensor"}

    manager.register(WrongType("wrong"), "wrong")
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    qt = manager.get("npy").quantize(_tensor(w), ExportOptions("int8"))
    assert qt.scheme == "int8-row" and qt.arrays["q"].dtype == np.int8
    assert np.abs(qt.dequantize() - w).max() <= np.abs(w).max() / 127
    bad = w.copy()
    bad[2, 5] = np.nan
    with pytest.raises(BadWeightsError, match="o_proj"):
        manager.get("npy").quantize(_tensor(bad), ExportOptions("int8"))
    with pytest.raises(PluginError, match="plugin 'wrong': quantize returned dict, expected QuantizedTensor"):
        manager.get("wrong").quantize(_tensor(w), ExportOptions("fp16"))


def test_architectures_default_to_phi3_and_are_normalised(manager, fakes):
    """A plugin that names no architecture (every 1.0 plugin) writes phi3; one name alone is accepted;
    declaring none is a load failure, not a backend that refuses everything."""
    from phi_quant.hookspecs import hookimpl
    from phi_quant.types import BackendInfo

    assert HOOK_CONTRACT_VERSION == "1.4" and BackendInfo("x", "f", "r").architectures == ("phi3",)
    old = manager.register(fakes["MinimalBackend"]("old", contract="1.0"), "old")
    assert old.info.architectures == ("phi3",) and old.info.writes("phi3") and not old.info.writes("phimoe")

    def declaring(name, declared):
        class Declares(fakes["MinimalBackend"]):
            @hookimpl
            def backend_info(self):
                return BackendInfo(name=name, format="f", runtime="r", architectures=declared)

        return Declares(name)

    assert manager.register(declaring("one", "phi3"), "one").info.architectures == ("phi3",)
    with pytest.raises(PluginError, match="declares no architecture it writes"):
        manager.register(declaring("none", ()), "none")
    assert manager.names() == ["old", "one"]


def test_plugins_lists_architectures(manager, npy_backend):
    data = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).stdout)
    assert data["backends"][0]["architectures"] == ["phi3"]
    header, _, row = CliRunner().invoke(cli, ["plugins"]).stdout.splitlines()[:3]
    assert "architectures" in header.split() and " phi3 " in row
