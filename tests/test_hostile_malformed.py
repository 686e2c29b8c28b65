"""Class 1 of issue 18: malformed safetensors headers, shard indexes and config values are refused
with one line naming the file and the field (what was found, what is expected), exit 2, never a
traceback, nothing written.

(The seeded fuzzing of the same readers is tests/test_reader_fuzz.py.)
"""

from __future__ import annotations

import json

import pytest

from phi_quant.testing.factory import copy_checkpoint, edit_config, rewrite_header

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


LONGROPE = {"type": "longrope", "short_factor": [1.0] * 32, "long_factor": [2.0] * 32}

CONFIG_CASES = {
    "layers-abc": ({"num_hidden_layers": "abc"}, "num_hidden_layers must be an integer from 1 to 4096, found the string 'abc'"),
    "heads-zero": ({"num_attention_heads": 0}, "num_attention_heads must be an integer from 1 to 4096, found the number 0"),
    "hidden-a-list": ({"hidden_size": [256]}, "hidden_size must be an integer from 1 to 131072, found a list [256]"),
    "hidden-a-bool": ({"hidden_size": True}, "hidden_size must be an integer from 1 to 131072, found true"),
    "hidden-a-float": ({"hidden_size": 256.0}, "hidden_size must be an integer"),
    "rope-scaling-a-string": ({"rope_scaling": "longrope"}, "rope_scaling must be a JSON object, found the string 'longrope'"),
    "rope-factors-strings": ({"rope_scaling": dict(LONGROPE, short_factor=["1.0"] * 32)},
                             "rope_scaling.short_factor must be a list of finite numbers above 0"),
    "rope-factor-missing": ({"rope_scaling": {"type": "longrope", "long_factor": [1.0] * 32}},
                            "rope scaling 'longrope' needs short_factor, a list of rotary_dim/2 = 32 numbers"),
    "rope-factor-nan": ({"rope_scaling": dict(LONGROPE, long_factor=[float("nan")] * 32)},
                        "rope_scaling.long_factor must be a list of finite numbers"),
    "rope-type-a-number": ({"rope_scaling": {"type": 3}}, "rope_scaling.type must be a string, found the number 3"),
    "max-position-4k": ({"max_position_embeddings": "4k"}, "max_position_embeddings must be an integer from 1 to 1048576"),
    "max-position-huge": ({"max_position_embeddings": 10**12}, "max_position_embeddings must be an integer from 1 to 1048576"),
    "eps-negative": ({"rms_norm_eps": -1e-5}, "rms_norm_eps must be a finite number above 0.0 and at most 1.0"),
    "theta-infinite": ({"rope_theta": 1e400}, "rope_theta must be a finite number"),
    "partial-two": ({"partial_rotary_factor": 2.0}, "partial_rotary_factor must be a finite number above 0.0 and at most 1.0"),
    "tied-yes": ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false, found the string 'yes'"),
    "window-zero": ({"sliding_window": 0}, "sliding_window must be an integer from 1 to 16777216, found the number 0"),
    "eos-beyond-vocab": ({"eos_token_id": 10**6}, "eos_token_id must be a token id (or a list of ids) below vocab_size 512"),
    "bos-a-string": ({"bos_token_id": "<s>"}, "bos_token_id must be a token id below vocab_size 512"),
    "kv-heads-not-dividing": ({"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    "odd-rotary": ({"partial_rotary_factor": 0.3}, "gives 19 rotary dimensions", ),
    "head-size-undefined": ({"num_attention_heads": 3, "num_key_value_heads": 3},
                            "hidden_size 256 is not a multiple of num_attention_heads 3"),
    "config-a-list": ("[1, 2]", "config.json does not hold a JSON object"),
    "config-nested-deep": ('{"a": ' + "[" * 100000 + "]" * 100000 + "}", "config.json is not valid JSON (nested too deeply)"),
    "config-huge-integer": ('{"hidden_size": ' + "9" * 5000 + "}", "config.json is not valid JSON"),
}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_malformed_config_value_is_one_line(ckpt, quantize_refuses, case):
    change, fragment = CONFIG_CASES[case]
    if isinstance(change, str):
        (ckpt / "config.json").write_text(change)
    else:
        edit_config(ckpt, **change)
    line = quantize_refuses(ckpt, fragment)
    assert "config.json" in line
