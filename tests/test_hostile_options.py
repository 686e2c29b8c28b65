"""Class 7 of issue 18: every option is checked up front by what the receiving backend declares.

An unknown ``--option`` key is refused with the list of known ones; a value of the wrong type or
range, or one given for a precision it does not apply to, is refused; ``--group-size``,
``--symmetric`` and ``--target`` must be values the backend's precision declares;
``--context-length`` and ``--threads`` must be in range (also for ``run``/``eval``). All before
anything is created; a backend built for hook contract 1.0 (declaring nothing) keeps working.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from phi_quant import plugins
from phi_quant.cli import cli
from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.options import check_options
from phi_quant.types import ExportOptions

BACKENDS = ("llamacpp", "onnx", "openvino", "mlx", "reference")


@pytest.fixture(scope="module")
def real_manager():
    """The installed backends (entry points), loaded once for the module."""
    mgr = plugins.PhiQuant()
    missing = [b for b in BACKENDS if b not in mgr.names()]
    if missing:
        pytest.skip(f"backends not installed: {missing}")
    return mgr


@pytest.fixture
def installed(real_manager):
    old = plugins.reset_manager(real_manager)
    try:
        yield real_manager
    finally:
        plugins.reset_manager(old)


def refused(tmp_path, one_line_error, backend, precision, *args, fragments, code=2):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["quantize", "tiny:phi3-mini", "-b", backend, "-p", precision, "-o", str(out), *args])
    line = one_line_error(res, code, *fragments)
    assert list(tmp_path.iterdir()) == [], "refused before anything was created"
    return line


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unknown_option_key_lists_the_known_ones(installed, tmp_path, one_line_error, backend):
    known = [o.name for o in installed.get(backend).info.options]
    line = refused(tmp_path, one_line_error, backend, "int4", "--option", "no_such_thing=1",
                   fragments=[f"backend {backend!r} has no option 'no_such_thing'; its options:"])
    assert all(k in line for k in known) and (known or "takes no --option" in line)


CASES = {
    "group-size-7-llamacpp": ("llamacpp", "int4", ["--group-size", "7"], ["--group-size does not apply to llamacpp int4"]),
    "group-size-7-onnx": ("onnx", "int4", ["--group-size", "7"],
                          ["--group-size 7 is not accepted by onnx int4; choose one of: 16, 32, 64, 128, 256"]),
    "group-size-2**40": ("mlx", "int4", ["--group-size", str(2**40)], ["--group-size must be an integer from 1 to 1048576"]),
    "group-size-fp16-openvino": ("openvino", "fp16", ["--group-size", "64"], ["--group-size does not apply to openvino fp16"]),
    "context-length-negative": ("onnx", "int4", ["--context-length", "-5"],
                                ["--context-length must be an integer from 1 to 16777216, got -5"]),
    "context-length-beyond-the-model": ("mlx", "int4", ["--context-length", "100000"],
                                        ["--context-length 100000 is more than this model supports",
                                         "max_position_embeddings 4096"]),
    "target-quantum": ("onnx", "int4", ["--target", "quantum"],
                       ["--target quantum is not accepted by onnx; choose one of: cpu, cuda, dml"]),
    "target-for-llamacpp": ("llamacpp", "int4", ["--target", "cuda"], ["--target does not apply to llamacpp"]),
    "threads-0": ("reference", "int8", ["--threads", "0"], ["--threads must be an integer from 1 to 1024, got 0"]),
    "threads-negative": ("llamacpp", "int8", ["--threads", "-1"], ["--threads must be an integer from 1 to 1024, got -1"]),
    "symmetric-for-mlx": ("mlx", "int4", ["--symmetric"],
                          ["--symmetric is not accepted by mlx int4; choose one of: --asymmetric"]),
    "symmetric-for-fp16": ("onnx", "fp16", ["--asymmetric"], ["--symmetric/--asymmetric does not apply to onnx fp16"]),
    "option-wrong-type": ("onnx", "int4", ["--option", "block_size=big"], ["--option block_size='big' for onnx: expected an integer"]),
    "option-wrong-choice": ("onnx", "int4", ["--option", "block_size=48"], ["choose one of 16, 32, 64, 128, 256"]),
    "option-out-of-range": ("openvino", "int4", ["--option", "ratio=2"], ["--option ratio=2 for openvino: must be from 0 to 1"]),
    "option-for-another-precision": ("onnx", "fp16", ["--option", "accuracy_level=4"],
                                     ["--option accuracy_level applies to onnx int4, int8 only, not fp16"]),
    "option-bad-scheme": ("llamacpp", "int4", ["--option", "scheme=Q9_K"], ["--option scheme='Q9_K' for llamacpp: choose one of"]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_option_values_are_refused_up_front(installed, tmp_path, one_line_error, case):
    backend, precision, args, fragments = CASES[case]
    refused(tmp_path, one_line_error, backend, precision, *args, fragments=fragments)


def test_good_options_reach_the_backend_typed(installed):
    onnx = installed.get("onnx")
    opts = check_options(onnx, ExportOptions("int4", group_size=64, target="CPU", threads=2,
                                            extra={"rotary": "FUSED", "accuracy_level": 4, "symmetric": 0}))
    assert opts.target == "cpu" and opts.extra == {"rotary": "fused", "accuracy_level": 4, "symmetric": False}
    ov = installed.get("openvino")
    assert check_options(ov, ExportOptions("int4", group_size=-1, extra={"ratio": 1})).extra == {"ratio": 1.0}
    mlx = installed.get("mlx")
    assert check_options(mlx, ExportOptions("int8", group_size=32, symmetric=False, extra={"shard_size": 1000})).extra == {
        "shard_size": "1000"}
    with pytest.raises(UnsupportedPrecisionError, match="--group-size 2 is not accepted by openvino int4"):
        check_options(ov, ExportOptions("int4", group_size=2))


def test_a_backend_declaring_nothing_checks_its_own_options(manager, npy_backend, tmp_path):
    """A contract-1.0 plugin sees ``extra`` as before (the npy fake ignores it)."""
    res = CliRunner().invoke(cli, ["quantize", "tiny:phi3-mini", "-b", "npy", "-p", "fp32", "-o", str(tmp_path / "o"),
                                   "--option", "anything=1", "-q"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("args, fragment", [
    (["--threads", "0"], "--threads must be an integer from 1 to 1024, got 0"),
    (["--context-length", "-1"], "--context-length must be an integer from 1 to 16777216"),
    (["--max-tokens", "-3"], "--max-tokens must be a whole number >= 0, got -3"),
])
def test_run_options_are_checked(manager, npy_backend, tmp_path, one_line_error, args, fragment):
    from phi_quant.convert import convert

    out = tmp_path / "out"
    convert("tiny:phi3-mini", "npy", ExportOptions("fp32"), out)
    before = sorted(p.name for p in out.iterdir())
    res = CliRunner().invoke(cli, ["run", str(out), "--prompt", "hi", *args])
    one_line_error(res, 2, fragment)
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize("args, fragment", [
    (["doctor", "--context-length", "-5"], "--context-length must be an integer from 1 to 16777216, got -5"),
    (["recommend", "tiny:phi3-mini", "--context-length", "0"], "--context-length must be an integer from 1"),
    (["recommend", "tiny:phi3-mini", "--memory", "-3"], "--memory must be a number of GiB above 0, got -3"),
])
def test_doctor_and_recommend_options_are_checked(manager, npy_backend, one_line_error, args, fragment):
    one_line_error(CliRunner().invoke(cli, args), 2, fragment)
