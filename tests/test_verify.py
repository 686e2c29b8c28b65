"""Class 9 of issue 18: an output is never silently trusted after it was damaged.

``quantize`` records the size and sha256 of every file it wrote; ``phi-quant verify OUT`` names
the file that is missing, changed or extra; ``eval`` runs the full check and ``run`` the cheap one
(sizes) before loading. Damage is exit 2 with one line naming the file; the output is left as it is.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from phi_quant.cli import cli
from phi_quant.convert import convert
from phi_quant.manifest import MANIFEST_NAME, file_sha256
from phi_quant.types import ExportOptions

WEIGHT = "weights/model.layers.0.mlp.down_proj.weight.npz"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def out(manager, npy_backend, tmp_path):
    path = tmp_path / "out"
    convert("tiny:phi3-mini", "npy", ExportOptions("int8"), path)
    return path


def test_the_manifest_records_every_file(out):
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    assert sorted(manifest["outputs"]) == files and "README.md" in files and WEIGHT in files
    assert manifest["outputs"][WEIGHT] == {"bytes": (out / WEIGHT).stat().st_size, "sha256": file_sha256(out / WEIGHT)}
    assert manifest["manifest_version"] == 2


def test_an_intact_output_verifies(out):
    res = invoke("verify", out)
    assert res.exit_code == 0 and "match phi-quant.json (sha256)" in res.stdout, res.output
    res = invoke("verify", out, "--json", "--quick")
    data = json.loads(res.stdout)
    assert res.exit_code == 0 and data["ok"] and data["checked"] == "sizes" and data["problems"] == []


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_file_overwritten_in_place_is_named_by_verify_and_eval(out, one_line_error):
    _flip_a_byte(out / WEIGHT)
    before = file_sha256(out / WEIGHT)
    one_line_error(invoke("verify", out), 2, f"{WEIGHT} was modified", "re-create the output")
    res = invoke("verify", out, "--json")
    assert res.exit_code == 2 and json.loads(res.stdout)["problems"][0]["kind"] == "hash"
    one_line_error(invoke("eval", out, "--reference", "tiny:phi3-mini"), 2, f"{WEIGHT} was modified")
    assert invoke("verify", out, "--quick").exit_code == 0  # same size: only the hash (eval, verify) sees it
    assert file_sha256(out / WEIGHT) == before, "verification never repairs or deletes"


def test_a_truncated_file_is_named_by_run(out, one_line_error):
    (out / WEIGHT).write_bytes((out / WEIGHT).read_bytes()[:-100])
    one_line_error(invoke("run", out, "--prompt", "Hi"), 2, f"{WEIGHT} has", "phi-quant.json recorded")
    one_line_error(invoke("verify", out, "--quick"), 2, f"{WEIGHT} has")


def test_missing_and_extra_files(out, one_line_error):
    (out / "config.json").unlink()
    (out / "stray.bin").write_bytes(b"?")
    line = one_line_error(invoke("verify", out), 2, "config.json is missing", "(and 1 more problem)")
    problems = json.loads(invoke("verify", out, "--json").stdout)["problems"]
    assert [(p["file"], p["kind"]) for p in problems] == [("config.json", "missing"), ("stray.bin", "extra")], line


def test_an_extra_file_alone_does_not_stop_run(out):
    (out / "notes.txt").write_text("my notes")
    assert invoke("run", out, "--prompt", "Hi", "--max-tokens", "2").exit_code == 0
    assert invoke("verify", out).exit_code == 2


def test_an_output_of_an_older_phi_quant(out, one_line_error):
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    del manifest["outputs"]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    one_line_error(invoke("verify", out), 2, "records no file sizes or hashes", "--force")
    assert invoke("run", out, "--prompt", "Hi", "--max-tokens", "2").exit_code == 0


def test_a_malformed_record_is_named(out, one_line_error):
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["outputs"] = ["weights"]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    one_line_error(invoke("run", out, "--prompt", "Hi"), 2, "malformed 'outputs' record")
