"""The command line without a model: JSON output, one-line errors and exit codes, option parsing,
machine detection parsers."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from phi_quant import __version__
from phi_quant.cli import cli
from phi_quant.cli._common import parse_option_value, parse_options
from phi_quant.errors import BackendNotInstalledError, BadInputError
from phi_quant.hardware import detect_machine, parse_cpuinfo, parse_nvidia_smi
from phi_quant.progress import NullProgress, make_progress


def invoke(*args, **kw):
    return CliRunner().invoke(cli, list(args), **kw)


def assert_one_line_error(res, code, *fragments):
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in res.output


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and __version__ in res.stdout


def test_plugins_json_is_valid_and_lists_registered_backends(manager, npy_backend):
    res = invoke("plugins", "--json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    (b,) = data["backends"]
    assert b["name"] == "npy" and b["format"] == "NumPy .npy"
    assert [p["precision"] for p in b["precisions"]] == ["fp32", "int8"]
    assert data["failures"] == []


def test_plugins_table(manager, npy_backend):
    res = invoke("plugins")
    assert res.exit_code == 0
    header, rule, row = res.stdout.splitlines()[:3]
    assert header.split() == ["backend", "distribution", "version", "format", "runtime", "architectures", "precisions"]
    assert row.startswith("npy") and "fp32 (f32), int8 (int8-row)" in row


@pytest.mark.parametrize("all_pass", [True, False])
def test_plugins_check_runs_the_kit_and_exits_1_on_failure(manager, npy_backend, monkeypatch, all_pass):
    import phi_quant.testing.kit as kit

    calls = []

    def fake_run_kit(backend, **kw):
        calls.append((backend, kw.get("plugin")))
        return [kit.CheckResult("export[phi4-mini-int8]", True, "ok"),
                kit.CheckResult("fidelity[phi4-mini-int8]", all_pass, "KL 0.001" if all_pass else "KL 0.9 > 0.05")]

    monkeypatch.setattr(kit, "run_kit", fake_run_kit)
    res = invoke("plugins", "--check", "npy")
    assert calls == [("npy", None)]
    assert res.exit_code == (0 if all_pass else 1), res.output
    assert ("2/2" if all_pass else "1/2") + " checks passed for npy" in res.stdout
    assert ("FAIL" in res.stdout) is not all_pass
    res = invoke("plugins", "--check", "npy", "--json")
    assert json.loads(res.stdout)["passed"] is all_pass
    res = invoke("plugins", "--check", "notinstalled", "--plugin", "my_pkg.plugin")
    assert calls[-1] == ("notinstalled", "my_pkg.plugin")


def test_plugins_check_of_a_missing_backend_says_what_to_install(manager):
    res = invoke("plugins", "--check", "mlx")
    assert_one_line_error(res, 2, "pip install phi-quant-mlx")


def test_doctor_json_is_valid(manager, npy_backend):
    res = invoke("doctor", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    m = data["machine"]
    assert m["ram_total_bytes"] >= m["ram_available_bytes"] > 0
    assert set(m["isa"]) >= {"avx2", "avx512f", "avx512_vnni", "amx", "neon", "f16c"}
    assert data["backends"]["npy"]["available"] is True
    fits = {(r["backend"], r["precision"], r["model"]): r for r in data["fits"]}
    # int4 is not offered by npy, so it has no rows; fp32 Phi-4 needs far more than int8 Phi-4-mini
    assert ("npy", "int4", "Phi-4") not in fits
    assert fits[("npy", "fp32", "Phi-4")]["needs_bytes"] > 50 * 1024**3
    assert fits[("npy", "fp32", "Phi-4")]["fits"] is False


def test_doctor_text(manager, npy_backend):
    res = invoke("doctor")
    assert res.exit_code == 0, res.output
    assert "RAM" in res.stdout and "npy" in res.stdout and "Fits this machine" in res.stdout


def test_missing_backend_names_the_package(manager, tmp_path):
    res = invoke("quantize", "tiny:phi4-mini", "--backend", "llamacpp", "--precision", "int4", "-o", str(tmp_path / "o"))
    assert_one_line_error(res, 2, "backend 'llamacpp' is not installed", "pip install phi-quant-llamacpp")
    assert not (tmp_path / "o").exists()


def test_quantize_refuses_an_existing_output_without_force(manager, npy_backend, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    res = invoke("quantize", "tiny:phi4-mini", "--backend", "npy", "--precision", "int8", "-o", str(out))
    assert_one_line_error(res, 2, "already exists", "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name != "out"], "no temporary directory left behind"


def test_quantize_refuses_a_precision_the_backend_lacks(manager, npy_backend, tmp_path):
    res = invoke("quantize", "tiny:phi4-mini", "-b", "npy", "-p", "int4", "-o", str(tmp_path / "o"))
    assert_one_line_error(res, 2, "does not offer precision 'int4'", "fp32, int8")


def test_quantize_refuses_an_unknown_scheme(manager, npy_backend, tmp_path):
    res = invoke("quantize", "tiny:phi4-mini", "-b", "npy", "-p", "int8", "--scheme", "Q9_9", "-o", str(tmp_path / "o"))
    assert_one_line_error(res, 2, "no scheme 'Q9_9'", "int8-row")


def test_bad_option_syntax_is_bad_input(manager, npy_backend, tmp_path):
    res = invoke("quantize", "tiny:phi4-mini", "-b", "npy", "-p", "int8", "--option", "novalue", "-o", str(tmp_path / "o"))
    assert_one_line_error(res, 2, "--option expects key=value")


def test_run_on_a_directory_without_manifest(tmp_path):
    res = invoke("run", str(tmp_path), "--prompt", "hi")
    assert_one_line_error(res, 2, "phi-quant.json", "phi-quant quantize")


def test_debug_reraises(manager, monkeypatch):
    monkeypatch.setenv("PHI_QUANT_DEBUG", "1")
    res = invoke("quantize", "m", "-b", "onnx", "-p", "int4", "-o", "x")
    assert isinstance(res.exception, BackendNotInstalledError)
    res = invoke("run", "/nonexistent/dir", "--prompt", "x")
    assert isinstance(res.exception, BadInputError)
    monkeypatch.delenv("PHI_QUANT_DEBUG")
    res = invoke("--debug", "run", "/nonexistent/dir", "--prompt", "x")
    assert isinstance(res.exception, BadInputError)


@pytest.mark.parametrize(
    "text, value",
    [("4", 4), ("-2", -2), ("0.5", 0.5), ("1e-3", 1e-3), ("true", True), ("No", False), ("Q4_K_M", "Q4_K_M"), ("", "")],
)
def test_option_values_are_typed(text, value):
    got = parse_option_value(text)
    assert got == value and type(got) is type(value)


def test_parse_options_keeps_the_last_value_and_splits_on_the_first_equals():
    assert parse_options(["a=1", "b=x=y", "a=2"]) == {"a": 2, "b": "x=y"}


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp i8mm
CPU implementer\t: 0x41
"""


def test_parse_cpuinfo_x86_and_arm():
    model, flags = parse_cpuinfo(X86_CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert flags == {"avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx"}
    model, flags = parse_cpuinfo(ARM_CPUINFO)
    assert flags == {"neon", "dotprod", "i8mm"}


def test_parse_nvidia_smi():
    gpus = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559, 550.54.15\nNVIDIA L4, 23034, 550.54.15\n")
    assert [g["name"] for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert gpus[0]["memory_total_bytes"] == 81559 * 1024**2


def test_detect_machine_on_this_machine():
    m = detect_machine()
    assert m.cpu_model and m.cpu_cores_logical >= 1
    assert 0 < m.ram_available_bytes <= m.ram_total_bytes
    json.dumps(m.as_dict())


def test_progress_is_silent_when_quiet_or_not_a_terminal(capsys):
    import io

    assert isinstance(make_progress(quiet=True), NullProgress)
    assert isinstance(make_progress(stream=io.StringIO()), NullProgress)


def test_progress_bar_on_a_terminal_counts_bytes():
    import io

    from phi_quant.progress import TqdmProgress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = make_progress(stream=stream, description="convert")
    assert isinstance(bar, TqdmProgress)
    bar.start(3 * 1024**2, "npy int8")
    bar.advance(1024**2, "model.embed_tokens.weight")
    bar.advance(2 * 1024**2, "lm_head.weight")
    bar.finish()
    text = stream.getvalue()
    assert "npy int8" in text and "3.00M/3.00M" in text


def test_run_names_the_package_of_the_backend_that_wrote_the_output(manager, tmp_path):
    (tmp_path / "phi-quant.json").write_text(json.dumps({"backend": {"name": "openvino"}, "precision": "int4"}))
    res = invoke("run", str(tmp_path), "--prompt", "hi")
    assert_one_line_error(res, 2, "backend 'openvino' is not installed", "pip install phi-quant-openvino")
