"""Pre-tokenizer choice by regex: known patterns map to llama.cpp names, anything else is refused."""

from __future__ import annotations

import pytest

from phi_quant.errors import UnsupportedModelError
from phi_quant_llamacpp.constants import GPT2_PATTERN, PRE_TOKENIZERS
from phi_quant_llamacpp.vocab import pre_tokenizer_name


def _split(pattern: str) -> dict:
    return {
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        }
    }


@pytest.mark.parametrize("pattern,name", sorted(PRE_TOKENIZERS.items(), key=lambda kv: kv[1]))
def test_known_regexes(pattern, name):
    assert pre_tokenizer_name(_split(pattern)) == name


def test_plain_byte_level_is_gpt2():
    tj = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    assert pre_tokenizer_name(tj) == "gpt-2" and PRE_TOKENIZERS[GPT2_PATTERN] == "gpt-2"


def test_unknown_regex_is_refused_with_a_reason():
    with pytest.raises(UnsupportedModelError, match="matches no pre-tokenizer llama.cpp implements"):
        pre_tokenizer_name(_split(r"\p{L}+|\p{N}"))


def test_digits_then_byte_level_is_smollm():
    """SmolLM2's pre-tokenizer (real:smollm2): each digit alone, then the GPT-2 split."""
    digits = {"type": "Digits", "individual_digits": True}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tj = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [digits, byte_level]}}
    assert pre_tokenizer_name(tj) == "smollm"
    grouped = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [dict(digits, individual_digits=False),
                                                                       byte_level]}}
    with pytest.raises(UnsupportedModelError, match="smollm"):  # digit runs kept together: not llama.cpp's
        pre_tokenizer_name(grouped)
