"""batch: the matrix file is validated up front with one-line errors; cells convert like `quantize`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from phi_quant.batch import EXAMPLE, load_matrix, model_folder, parse_matrix, plan_batch
from phi_quant.cli import cli
from phi_quant.errors import BadInputError
from phi_quant.plugins import get_manager

GOOD = {"output": "zoo", "models": ["tiny:phi3-mini"], "backends": ["reference"], "precisions": ["int4"]}


def test_the_example_is_a_valid_matrix(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(EXAMPLE)
    m = load_matrix(path)
    assert m.output == tmp_path / "zoo" and m.models == ("tiny:phi3-mini", "microsoft/Phi-4-mini-instruct")
    assert m.options["llamacpp-int4"] == ("--scheme", "Q4_K_M") and m.options["mlx"] == ("--option", "dtype=float16")


@pytest.mark.parametrize("change, message", [
    ({"outptu": "x"}, "key 'outptu' is unknown"),
    ({"output": None}, "output must be a directory"),
    ({"output": "s3://bucket/zoo"}, "object-store URIs are not supported yet"),
    ({"models": []}, "models must be a non-empty list"),
    ({"backends": ["reference", "reference"]}, "backends lists a name twice"),
    ({"precisions": ["int3"]}, "precisions has 'int3'"),
    ({"existing": "overwrite"}, "existing must be one of fail, skip, replace"),
    ({"options": {"onnx": {"scheme": "x"}}}, "options.onnx names no backend"),
    ({"options": {"reference": {"group_size": 32}}}, "options.reference.group_size is not a quantize option"),
    ({"options": {"reference-int4": {"group-size": 0}}}, "group-size must be a positive whole number"),
    ({"options": {"reference": {"symmetric": "yes"}}}, "symmetric must be true or false"),
    ({"models": ["a/ckpt", "b/ckpt"]}, "would share the output folder"),
])
def test_a_bad_matrix_is_one_clear_line(tmp_path, change, message):
    for d in ("a/ckpt", "b/ckpt"):
        (tmp_path / d).mkdir(parents=True)
    raw = {**GOOD, **change}
    if "outptu" in change:
        raw.pop("output")
    with pytest.raises(BadInputError) as info:
        parse_matrix(raw, tmp_path / "m.yaml")
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith(str(tmp_path / "m.yaml"))


def test_missing_keys_and_broken_yaml(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("output: zoo\nmodels: [a\n")
    with pytest.raises(BadInputError, match=r"not valid YAML at line \d"):
        load_matrix(path)
    path.write_text("output: zoo\n")
    with pytest.raises(BadInputError, match="key 'models' is missing"):
        load_matrix(path)


def test_plan_names_folders_merges_options_and_leaves_out_what_a_backend_lacks(tmp_path):
    (tmp_path / "ckpt" / "Phi-4").mkdir(parents=True)
    m = parse_matrix({"output": str(tmp_path / "z"), "models": ["tiny:phi4-mini", "microsoft/Phi-4", str(tmp_path / "ckpt" / "Phi-4")],
                      "backends": ["b"], "precisions": ["int4", "int8"],
                      "options": {"b": {"group-size": 64}, "b-int4": {"symmetric": False, "option": {"k": True}}}},
                     tmp_path / "m.yaml")
    cells, notes = plan_batch(m, {"b": ["int4"]})
    assert notes == ["b does not offer int8: left out"]
    assert [c.output.relative_to(tmp_path / "z").as_posix() for c in cells] == [
        "tiny-phi4-mini/b-int4", "microsoft--Phi-4/b-int4", "Phi-4/b-int4"]
    assert cells[0].spec.extra_args == ("--group-size", "64", "--asymmetric", "--option", "k=true")
    assert model_folder("tiny:phi3-mini") == "tiny-phi3-mini"


@pytest.mark.skipif("reference" not in get_manager().names(), reason="phi-quant-reference not installed")
def test_batch_converts_here_reports_and_honours_existing(tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text("output: zoo\nmodels: [tiny:phi3-mini]\nbackends: [reference]\nprecisions: [fp32, int4]\n")
    res = CliRunner().invoke(cli, ["batch", str(matrix), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "zoo" / "batch.json").read_text())
    assert [(c["precision"], c["status"]) for c in summary["cells"]] == [("fp32", "ok"), ("int4", "ok")]
    int4 = Path(summary["cells"][1]["output_dir"])
    assert int4 == tmp_path / "zoo" / "tiny-phi3-mini" / "reference-int4" and (int4 / "README.md").is_file()
    assert summary["cells"][1]["size_bytes"] < summary["cells"][0]["size_bytes"] / 4
    # Again: the outputs exist, and the default `existing: fail` says what to do (exit 1).
    res = CliRunner().invoke(cli, ["batch", str(matrix)])
    assert res.exit_code == 1 and "2 of 2 conversions failed" in res.output
    assert "set `existing: replace` or `existing: skip`" in (tmp_path / "zoo" / "batch.json").read_text()
    matrix.write_text(matrix.read_text() + "existing: skip\n")
    res = CliRunner().invoke(cli, ["batch", str(matrix), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["meta"]["skipped"] == 2
