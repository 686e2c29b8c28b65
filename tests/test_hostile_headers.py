"""Class 1 of issue 18: malformed safetensors headers, shard indexes and config values are refused
with one line naming the file and the field, exit 2, never a traceback, nothing written.

(The seeded fuzzing of the same readers is tests/test_reader_fuzz.py.)
"""

from __future__ import annotations

import json

import pytest

from phi_quant.testing.factory import copy_checkpoint, rewrite_header

SHARD1 = "model-00001-of-00002.safetensors"
EMBED = "model.embed_tokens.weight"


@pytest.fixture
def ckpt(tmp_path):
    return copy_checkpoint("phi3-mini", tmp_path / "ck")


def _set(name, field, value):
    return lambda h: h[name].__setitem__(field, value)


HEADER_CASES = {
    "metadata-is-a-list": (lambda h: h.__setitem__("__metadata__", ["format", "pt"]), None,
                           ["__metadata__ must map names to strings, found a list"]),
    "metadata-value-a-number": (lambda h: h.__setitem__("__metadata__", {"format": 3}), None,
                                ["__metadata__ must map names to strings"]),
    "nested-100000-deep": (None, lambda t: t.replace('"shape": [512, 256]', '"shape": ' + "[" * 100000 + "]" * 100000),
                           ["corrupt safetensors header (nested too deeply)"]),
    "offset-1e400": (None, lambda t: t.replace('"data_offsets": [0, 262144]', '"data_offsets": [0, 1e400]'),
                     ["corrupt safetensors header (number 1e400 is out of range)"]),
    "offset-nan": (None, lambda t: t.replace('"data_offsets": [0, 262144]', '"data_offsets": [0, NaN]'),
                   ["NaN is not a JSON number"]),
    "offset-a-float": (_set(EMBED, "data_offsets", [0, 262144.0]), None,
                       [f"header entry '{EMBED}' has data_offsets a list [0, 262144.0]", "non-negative integers"]),
    "offset-negative": (_set(EMBED, "data_offsets", [-8, 262136]), None, ["has data_offsets a list [-8, 262136]"]),
    "three-offsets": (_set(EMBED, "data_offsets", [0, 1, 262144]), None, ["expected [begin, end]"]),
    "dtype-a-list": (_set(EMBED, "dtype", ["BF16"]), None, [f"header entry '{EMBED}' has dtype a list ['BF16']"]),
    "shape-a-string": (_set(EMBED, "shape", "512x256"), None, ["has shape the string '512x256'"]),
    "shape-with-bool": (_set(EMBED, "shape", [512, True]), None, ["has shape a list [512, True]"]),
    "entry-a-number": (lambda h: h.__setitem__(EMBED, 7), None, [f"header entry '{EMBED}' must be an object"]),
    "entry-without-dtype": (lambda h: h[EMBED].pop("dtype"), None, ["has no dtype"]),
    "header-a-list": (None, lambda t: "[" + t + "]", ["it is a list", "not a JSON object"]),
    "duplicate-key": (None, lambda t: t[:-1] + f', "{EMBED}": {json.dumps(json.loads(t)[EMBED])}}}',
                      [f"key '{EMBED}' appears twice"]),
}


@pytest.mark.parametrize("case", HEADER_CASES, ids=list(HEADER_CASES))
def test_malformed_header_is_one_line(ckpt, quantize_refuses, case):
    edit, text, fragments = HEADER_CASES[case]
    rewrite_header(ckpt / SHARD1, edit, text=text)
    line = quantize_refuses(ckpt, *fragments)
    assert SHARD1 in line  # the message names the file


def _write_index(ckpt, edit=None, text=None):
    path = ckpt / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    if edit:
        edit(index)
    path.write_text(text if text is not None else json.dumps(index))


INDEX_CASES = {
    "value-a-number": (lambda i: i["weight_map"].__setitem__(EMBED, 1), None,
                       [f"weight_map['{EMBED}'] must be a shard file name, found the number 1"]),
    "value-a-list": (lambda i: i["weight_map"].__setitem__(EMBED, [SHARD1]), None, ["must be a shard file name"]),
    "weight-map-a-list": (lambda i: i.__setitem__("weight_map", [EMBED]), None,
                          ["weight_map must be an object of tensor names to shard file names, found a list"]),
    "weight-map-empty": (lambda i: i.__setitem__("weight_map", {}), None, ["weight_map names no tensor"]),
    "no-weight-map": (lambda i: i.pop("weight_map"), None, ["has no weight_map"]),
    "not-json": (None, '{"weight_map": {', ["is not valid JSON"]),
    "nested-deep": (None, "[" * 100000 + "]" * 100000, ["is not valid JSON (nested too deeply)"]),
    "a-number": (None, "12", ["must hold a JSON object, found the number 12"]),
}


@pytest.mark.parametrize("case", INDEX_CASES, ids=list(INDEX_CASES))
def test_malformed_index_is_one_line(ckpt, quantize_refuses, case):
    edit, text, fragments = INDEX_CASES[case]
    _write_index(ckpt, edit, text)
    line = quantize_refuses(ckpt, *fragments)
    assert "model.safetensors.index.json" in line
