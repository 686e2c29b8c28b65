"""Class 6 of issue 18: memory and time bombs are refused before any work, within a memory limit.

``num_hidden_layers: 1000000000`` used to grow the process past 3.7 GiB in two minutes. Now the
config's ranges bound every size computed from it, the layers present are counted from tensor
names before anything is planned, the shapes are checked against the bytes present, and JSON side
files are read only up to a bound. Each case runs the real CLI under ``ulimit -v`` (3 GiB) and a
timeout, and must be refused quickly with one line.
"""

from __future__ import annotations

import resource
import time

import pytest

from phi_quant.testing.factory import cached_checkpoint, copy_checkpoint, edit_config

LIMITS = {resource.RLIMIT_AS: 3 * 2**30}


@pytest.fixture(scope="module", autouse=True)
def _tiny_built():
    cached_checkpoint("phi3-mini")


@pytest.fixture
def ckpt(tmp_path):
    return copy_checkpoint("phi3-mini", tmp_path / "ck")


BOMBS = {
    "a-billion-layers": ({"num_hidden_layers": 10**9}, "num_hidden_layers must be an integer from 1 to 4096"),
    "more-layers-than-present": ({"num_hidden_layers": 4000},
                                 "says num_hidden_layers=4000 but the checkpoint has no tensors for layer 2 (it holds 2 layers"),
    "a-huge-vocabulary": ({"vocab_size": 16_000_000}, "model.embed_tokens.weight has shape [512, 256] but config.json "
                                                      "implies [16000000, 256]"),
    "a-huge-mlp": ({"intermediate_size": 1 << 20}, "gate_up_proj.weight has shape"),
    "a-huge-context": ({"max_position_embeddings": 10**15}, "max_position_embeddings must be an integer from 1 to 1048576"),
}


@pytest.mark.parametrize("case", BOMBS, ids=list(BOMBS))
@pytest.mark.parametrize("command", ["quantize", "inspect"])
def test_a_config_bomb_is_refused_fast_under_a_memory_limit(cli_process, ckpt, tmp_path, one_line_error, case, command):
    edit_config(ckpt, **BOMBS[case][0])
    args = ["-b", "reference", "-p", "int4", "-o", tmp_path / "out"] if command == "quantize" else []
    t0 = time.monotonic()
    res = cli_process.run(command, ckpt, *args, limits=LIMITS, timeout=120)
    one_line_error(res, 2, BOMBS[case][1])
    assert time.monotonic() - t0 < 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_a_huge_json_side_file_is_not_read(cli_process, ckpt, tmp_path, one_line_error):
    """A 300 MB tokenizer.json (sparse: it costs no disk) is refused by its size, not parsed."""
    with open(ckpt / "tokenizer.json", "r+b") as f:
        f.truncate(300 * 2**20)
    res = cli_process.run("inspect", ckpt, limits=LIMITS, timeout=120)
    one_line_error(res, 2, "tokenizer.json is 314572800 bytes; no checkpoint JSON file is that large")
