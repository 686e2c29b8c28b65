"""Class 10 of issue 18: a hostile or clashing plugin cannot take phi-quant down or replace a backend.

A plugin that calls ``sys.exit(3)`` at import (or raises any other BaseException but Ctrl-C, at
import or in a hook) is reported by name and distribution while ``plugins``, ``inspect`` and
``doctor`` keep working; a plugin claiming an installed backend's name is refused by name and
distribution, the first (for our own names: the distribution this project publishes) is kept,
and the message says which. All through the real CLI, with the plugins on ``PYTHONPATH`` as an
installed distribution would be.
"""

from __future__ import annotations

import json

import pytest

GOOD = """
from phi_quant.hookspecs import hookimpl
from phi_quant.types import BackendInfo, PrecisionSpec

@hookimpl
def backend_info():
    return BackendInfo(name={name!r}, format="evil", runtime="none")

@hookimpl
def supported_precisions():
    return [PrecisionSpec("int4", "evil-q4")]
"""


@pytest.fixture
def site(tmp_path, plugin_dist):
    root = tmp_path / "site"
    root.mkdir()
    plugin_dist(root, "phi-quant-exiter", "0.1", "exiter", "pq_exiter", "import sys\nsys.exit(3)\n")
    plugin_dist(root, "phi-quant-infoexit", "0.1", "infoexit", "pq_infoexit",
                GOOD.format(name="infoexit").replace('return BackendInfo(', 'raise SystemExit(4)\n    return BackendInfo('))
    return root


def test_sys_exit_at_import_does_not_take_the_commands_down(cli_process, site, tmp_path):
    plugins = "reference,exiter,infoexit"
    res = cli_process.run("plugins", plugins=plugins, site=[site])
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert res.stdout.splitlines()[2].startswith("reference")
    assert "FAILED exiter (phi-quant-exiter): could not be imported: SystemExit: 3" in res.stderr
    assert "FAILED infoexit (phi-quant-infoexit): backend_info failed: SystemExit: 4" in res.stderr
    res = cli_process.run("inspect", "tiny:phi3-mini", "--json", plugins=plugins, site=[site])
    assert res.returncode == 0 and "reference" in json.loads(res.stdout)["backends"], res.stderr
    res = cli_process.run("doctor", "--json", plugins=plugins, site=[site])
    assert res.returncode == 0, res.stderr
    assert {f["name"] for f in json.loads(res.stdout)["failures"]} == {"exiter", "infoexit"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_sys_exit_inside_export_is_one_line(cli_process, tmp_path, plugin_dist, one_line_error):
    root = tmp_path / "site"
    root.mkdir()
    plugin_dist(root, "phi-quant-quitter", "0.1", "quitter", "pq_quitter",
                GOOD.format(name="quitter").replace('"int4", "evil-q4"', '"fp32", "none"')
                + "\n@hookimpl\ndef export(source, output_dir, options, progress):\n"
                  "    (output_dir / 'half').write_bytes(b'1')\n    raise SystemExit(5)\n")
    res = cli_process.run("quantize", "tiny:phi3-mini", "-b", "quitter", "-p", "fp32", "-o", tmp_path / "out",
                          plugins="quitter", site=[root])
    one_line_error(res, 1, "plugin 'quitter': export failed: SystemExit: 5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_a_plugin_claiming_an_installed_backend_name_is_refused(cli_process, tmp_path, plugin_dist):
    pytest.importorskip("phi_quant_onnx")
    root = tmp_path / "site"
    root.mkdir()
    # found first on sys.path: one under our entry-point name, one under another name claiming the backend name
    plugin_dist(root, "evil-onnx", "6.6.6", "onnx", "pq_evil_onnx", GOOD.format(name="onnx"))
    plugin_dist(root, "sneaky-onnx", "1.0", "sneaky", "pq_sneaky", GOOD.format(name="onnx"))
    res = cli_process.run("plugins", "--json", plugins="onnx,sneaky", site=[root])
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [(b["name"], b["distribution"]) for b in data["backends"]] == [("onnx", "phi-quant-onnx")]
    failures = {f["distribution"]: f for f in data["failures"]}
    assert set(failures) == {"evil-onnx", "sneaky-onnx"}
    assert failures["evil-onnx"]["name"] == "onnx"
    assert "the plugin name 'onnx' is already taken by phi-quant-onnx" in failures["evil-onnx"]["error"]
    assert "backend name 'onnx' is already provided by phi-quant-onnx" in failures["sneaky-onnx"]["error"]
    assert "(kept)" in failures["sneaky-onnx"]["error"]
    res = cli_process.run("plugins", plugins="onnx,sneaky", site=[root])
    assert "FAILED onnx (evil-onnx): the plugin name 'onnx' is already taken by phi-quant-onnx" in res.stderr


def test_the_first_of_two_unknown_plugins_with_one_name_is_kept(cli_process, tmp_path, plugin_dist):
    root = tmp_path / "site"
    root.mkdir()
    plugin_dist(root, "first-dist", "1.0", "twin", "pq_twin_a", GOOD.format(name="twin"))
    plugin_dist(root, "second-dist", "1.0", "twin2", "pq_twin_b", GOOD.format(name="twin"))
    data = json.loads(cli_process.run("plugins", "--json", plugins="twin,twin2", site=[root]).stdout)
    (kept,) = data["backends"]
    (refused,) = data["failures"]
    assert {kept["distribution"], refused["distribution"]} == {"first-dist", "second-dist"}
    assert f"already provided by {kept['distribution']} 1.0 (kept)" in refused["error"]
