"""Class 8 of issue 18: tokenizer files are checked before any backend reads them.

Every token id must address a row of the embedding: an added token with id 10^9 made the llamacpp
backend allocate ~6 GiB and die. The structure backends rely on is checked too: a vocabulary that
is a string used to convert "fine" in onnx and mlx into outputs their runtimes could not load.
Each refusal names the file and the field, exit 2, before anything is written, for every backend.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from phi_quant import plugins
from phi_quant.cli import cli
from phi_quant.testing.factory import copy_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    return copy_checkpoint("phi4", tmp_path / "ck")


def edit(ckpt, name, change):
    path = ckpt / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


CASES = {
    "added-id-1e9": ("tokenizer.json", lambda t: t["added_tokens"].append(
        {"id": 10**9, "content": "<|huge|>", "special": True}),
        ["added token '<|huge|>' has id 1000000000, but the model has 640 embedding rows"]),
    "vocab-id-beyond-rows": ("tokenizer.json", lambda t: t["model"]["vocab"].__setitem__("zz", 5000),
                             ["model.vocab token 'zz' has id 5000, but the model has 640 embedding rows"]),
    "vocab-a-string": ("tokenizer.json", lambda t: t["model"].__setitem__("vocab", "abc"),
                       ["model.vocab must be an object of token strings to ids", "found the string 'abc'"]),
    "vocab-negative-id": ("tokenizer.json", lambda t: t["model"]["vocab"].__setitem__("zz", -1),
                          ["model.vocab must be an object of token strings to ids"]),
    "merge-a-number": ("tokenizer.json", lambda t: t["model"]["merges"].append(7),
                       ["model.merges must be a list of 'a b' strings or [a, b] pairs"]),
    "unknown-model-type": ("tokenizer.json", lambda t: t["model"].__setitem__("type", "Magic"),
                           ["model.type must be one of 'BPE', 'Unigram', 'WordPiece', 'WordLevel'"]),
    "added-without-id": ("tokenizer.json", lambda t: t["added_tokens"].append({"content": "<x>"}),
                         ["added_tokens must be a list of objects with an integer id and a string content"]),
    "model-missing": ("tokenizer.json", lambda t: t.pop("model"), ["tokenizer.json has no model"]),
    "template-a-number": ("tokenizer_config.json", lambda c: c.__setitem__("chat_template", 3),
                          ["chat_template must be a list of {name, template} objects"]),
    "eos-token-a-number": ("tokenizer_config.json", lambda c: c.__setitem__("eos_token", 7),
                           ["eos_token must be a token string or an object with a string content"]),
    "decoder-key-not-an-id": ("tokenizer_config.json", lambda c: c["added_tokens_decoder"].__setitem__(
        "x", {"content": "y"}), ["added_tokens_decoder key 'x' must be a token id"]),
    "generation-eos-beyond-rows": ("generation_config.json", lambda g: g.__setitem__("eos_token_id", [5, 10**6]),
                                   ["eos_token_id must be a token id (or list of ids) below vocab_size 640"]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_bad_tokenizer_file_is_refused(ckpt, quantize_refuses, case):
    name, change, fragments = CASES[case]
    edit(ckpt, name, change)
    line = quantize_refuses(ckpt, *fragments)
    assert name in line


@pytest.fixture(scope="module")
def real_manager():
    mgr = plugins.PhiQuant()
    if not mgr.names():
        pytest.skip("no backend installed")
    return mgr


def test_every_backend_is_spared_the_huge_id(real_manager, ckpt, tmp_path, one_line_error):
    """The refusal comes from the reader, so no backend ever sees the tokenizer (llamacpp used to die)."""
    edit(ckpt, "tokenizer.json", lambda t: t["added_tokens"].append({"id": 10**9, "content": "<|huge|>"}))
    old = plugins.reset_manager(real_manager)
    try:
        for backend in real_manager.names():
            precision = "int4" if backend != "openvino" else "int8"
            res = CliRunner().invoke(cli, ["quantize", str(ckpt), "-b", backend, "-p", precision,
                                           "-o", str(tmp_path / backend)])
            one_line_error(res, 2, "has id 1000000000")
            assert not (tmp_path / backend).exists()
    finally:
        plugins.reset_manager(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
