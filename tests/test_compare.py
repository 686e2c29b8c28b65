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
