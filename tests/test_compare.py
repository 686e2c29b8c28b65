"""compare: cells run as real `phi-quant` subprocesses; a failing cell is reported, not fatal."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from phi_quant import compare
from phi_quant.cli import cli
from phi_quant.compare import CellSpec, run_matrix
from phi_quant.plugins import get_manager


def test_failing_cell_is_reported_and_the_rest_still_run(tmp_path, monkeypatch):
    calls = []

    def fake_run_json(cmd, timeout):
        calls.append(cmd)
        if "quantize" in cmd:
            out = cmd[cmd.index("-o") + 1]
            if "--precision" in cmd and cmd[cmd.index("--precision") + 1] == "int4":
                return None, "Error: boom"
            (tmp_path / "w").mkdir(exist_ok=True)
            import pathlib

            pathlib.Path(out).mkdir(parents=True, exist_ok=True)
            (pathlib.Path(out) / "model.bin").write_bytes(b"x" * 1000)
            return {"scheme": "S"}, ""
        return {"fidelity": {"kl_mean": 0.5, "top1_agreement": 0.75}, "speed": {"gen_tokens_per_s": 9.0},
                "memory": {"peak_rss_bytes": 7}}, ""

    monkeypatch.setattr(compare, "_run_json", fake_run_json)
    cells = run_matrix("m", [CellSpec("b", "int8"), CellSpec("b", "int4")], tmp_path / "work", jobs=2)
    ok, bad = cells
    assert ok["status"] == "ok" and ok["kl_mean"] == 0.5 and ok["gen_tokens_per_s"] == 9.0 and ok["size_bytes"] == 1000
    assert bad["status"] == "failed" and bad["error"] == "quantize: Error: boom"
    assert not (tmp_path / "work" / "b-int8").exists()  # not kept
    assert sum("eval" in c for c in calls) == 1  # the failed conversion is not evaluated


@pytest.mark.skipif("reference" not in get_manager().names(), reason="phi-quant-reference not installed")
def test_compare_end_to_end_with_the_reference_backend(tmp_path):
    out = tmp_path / "report"
    res = CliRunner().invoke(cli, ["compare", "tiny:phi3-mini", "--backend", "reference", "--precision", "fp32",
                                   "--precision", "int4", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "report.json").read_text())
    cells = {c["precision"]: c for c in data["cells"]}
    assert set(cells) == {"fp32", "int4"} and all(c["status"] == "ok" for c in cells.values())
    assert cells["fp32"]["kl_mean"] < 1e-9 and cells["fp32"]["top1_agreement"] == 1.0
    assert cells["int4"]["kl_mean"] > cells["fp32"]["kl_mean"]
    assert cells["int4"]["size_bytes"] < cells["fp32"]["size_bytes"] / 4
    for f in ("report.md", "report.png", "report.html"):
        assert (out / f).stat().st_size > 0


# -- cells that die: what they leave, and what the report says ----------------------------------
needs_reference = pytest.mark.skipif("reference" not in get_manager().names(), reason="phi-quant-reference not installed")


def _wait_held(path, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return json.loads(path.read_text())


def _partials(root):
    return [p for p in root.rglob("*") if ".partial-" in p.name]


@needs_reference
def test_a_conversion_killed_outright_is_a_failed_cell_and_its_partial_output_is_swept(tmp_path, monkeypatch):
    """SIGKILL (what the OOM killer sends) leaves the .NAME.partial-* directory: the cell runner removes it."""
    import os
    import signal
    import threading

    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "reference-int4.hold").touch()
    monkeypatch.setenv("PHI_QUANT_TEST_HOLD_DIR", str(hold))
    result = {}
    out = tmp_path / "work" / "reference-int4"
    t = threading.Thread(target=lambda: result.update(compare._convert("tiny:phi3-mini", CellSpec("reference", "int4"), out, 120)))
    t.start()
    held = _wait_held(hold / "reference-int4.held")
    assert len(_partials(tmp_path / "work")) == 1  # mid-way: the partial directory is there
    os.kill(held["pid"], signal.SIGKILL)
    t.join(60)
    assert result["status"] == "failed"
    assert result["error"].startswith("quantize: killed by SIGKILL (out of memory?)")
    assert _partials(tmp_path / "work") == [] and not out.exists()


@needs_reference
def test_a_cell_subprocess_dies_with_its_parent_and_removes_its_partial_output(tmp_path):
    """The Ray-worker case without Ray: the process running a cell is SIGKILLed mid-conversion."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "reference-int4.hold").touch()
    out = tmp_path / "work" / "reference-int4"
    code = ("import sys; from pathlib import Path; from phi_quant.compare import CellSpec, _convert; "
            "_convert('tiny:phi3-mini', CellSpec('reference', 'int4'), Path(sys.argv[1]), 120)")
    runner = subprocess.Popen([sys.executable, "-c", code, str(out)], env=dict(os.environ, PHI_QUANT_TEST_HOLD_DIR=str(hold)))
    try:
        held = _wait_held(hold / "reference-int4.held")
        assert held["ppid"] == runner.pid and len(_partials(tmp_path / "work")) == 1
        runner.kill()
        runner.wait(30)
        try:
            psutil.Process(held["pid"]).wait(30)  # SIGTERM from the kernel when its parent died
        except psutil.NoSuchProcess:
            pass
    finally:
        if runner.poll() is None:
            runner.kill()
    assert not psutil.pid_exists(held["pid"]) or psutil.Process(held["pid"]).status() == psutil.STATUS_ZOMBIE
    assert _partials(tmp_path / "work") == [] and not out.exists()


# -- the command line around --ray ---------------------------------------------------------------
@needs_reference
def test_shared_dir_without_ray_is_refused(tmp_path):
    res = CliRunner().invoke(cli, ["compare", "tiny:phi3-mini", "--backend", "reference", "--shared-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--shared-dir applies only with --ray" in res.output


@needs_reference
def test_an_object_store_uri_is_refused_in_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["compare", "tiny:phi3-mini", "--backend", "reference", "-o", str(tmp_path),
                                   "--ray", "127.0.0.1:1", "--shared-dir", "s3://bucket/zoo"])
    assert res.exit_code == 2 and "object-store URIs are not supported yet" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "s3:").exists()


@needs_reference
def test_a_ray_address_where_nothing_listens_is_refused_at_once(tmp_path):
    res = CliRunner().invoke(cli, ["compare", "tiny:phi3-mini", "--backend", "reference", "-o", str(tmp_path),
                                   "--ray", "127.0.0.1:1"])
    assert res.exit_code == 2 and "nothing answers at 127.0.0.1:1" in res.output


@needs_reference
def test_ray_not_installed_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    res = CliRunner().invoke(cli, ["compare", "tiny:phi3-mini", "--backend", "reference", "-o", str(tmp_path), "--ray"])
    assert res.exit_code == 2 and "pip install 'phi-quant[ray]'" in res.output


def test_matrix_progress_prints_one_line_per_step_and_nothing_when_quiet():
    import io

    from phi_quant.progress import MatrixProgress

    stream = io.StringIO()
    progress = MatrixProgress({"converted": 2, "evaluated": 2}, stream=stream)
    progress("converted", {"backend": "b", "precision": "int8", "status": "converted"})
    progress("converted", {"backend": "b", "precision": "int4", "status": "failed", "error": "quantize: boom"})
    progress.close()
    assert stream.getvalue().splitlines() == ["[converted 1/2] b int8: converted",
                                              "[converted 2/2] b int4: failed: quantize: boom"]
    quiet = io.StringIO()
    MatrixProgress({"converted": 1}, quiet=True, stream=quiet)("converted", {"backend": "b", "precision": "p"})
    assert quiet.getvalue() == ""
