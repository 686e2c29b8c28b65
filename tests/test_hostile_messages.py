"""Class 12 of issue 18: every refusal names what it found and what is supported.

``architectures`` given as a string used to be reported as "architecture P is not supported" (its
first letter); a negative ``hidden_size`` as a LongRoPE factor-count mismatch. Each message below
names the field, the value found, and what would be accepted.
"""

from __future__ import annotations

import pytest

from phi_quant.testing.factory import copy_checkpoint, edit_config


@pytest.fixture
def ckpt(tmp_path):
    return copy_checkpoint("phi3.5-longrope", tmp_path / "ck")


CASES = {
    "architectures-a-string": ({"architectures": "Phi3ForCausalLM"},
                               ['architectures must be a list of model class names such as ["Phi3ForCausalLM"]',
                                "found the string 'Phi3ForCausalLM'"]),
    "architectures-numbers": ({"architectures": [3]}, ["architectures must be a list of model class names", "a list [3]"]),
    "negative-hidden-size": ({"hidden_size": -256}, ["hidden_size must be an integer from 1 to 131072, found the number -256"]),
    "unknown-architecture": ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"},
                             ["architecture MistralForCausalLM is not supported", "Supported: Phi3ForCausalLM"]),
    "a-related-architecture": ({"architectures": ["Phi3SmallForCausalLM"]},
                               ["architecture Phi3SmallForCausalLM is not supported: Phi-3-small uses block-sparse attention",
                                "Supported: Phi3ForCausalLM", "PhiMoEForCausalLM/PhimoeForCausalLM (Phi-3.5-MoE)"]),
    "factor-count": ({"partial_rotary_factor": 0.5},
                     ["short_factor/long_factor have 32/32 entries; expected rotary_dim/2 = 16",
                      "head_dim 64 x partial_rotary_factor 0.5"]),
    "rope-type": ({"rope_scaling": {"type": "yarn", "factor": 4.0}},
                  ["rope scaling type 'yarn' is not supported; Phi uses longrope (or the older name su)"]),
    "missing-field": ({"hidden_size": None}, ["has no hidden_size; is this a Phi-3/Phi-4 checkpoint?"]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_the_message_names_what_was_found_and_what_is_supported(ckpt, quantize_refuses, case):
    change, fragments = CASES[case]
    edit_config(ckpt, **change)
    line = quantize_refuses(ckpt, *fragments)
    assert "config.json" in line or "Supported" in line
