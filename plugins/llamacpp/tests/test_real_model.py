"""real:smollm2 through this backend: its "smollm" pre-tokenizer is carried into the GGUF, llama.cpp
tokenizes like Hugging Face, and the int8 export gives the oracle's answer to a real question.

Fidelity numbers on the real model are measured elsewhere; this is the plumbing that makes them possible.
"""

from __future__ import annotations

import pytest

from phi_quant.types import ExportOptions, NullProgress
from phi_quant_llamacpp import plugin

TEXTS = [
    "Pi is 3.14159265, 1,000,000 + 2024 = 1002024; ½ and ¾ too.",
    "  two  spaces,   three   spaces\tand a tab\n\nnew\r\nlines   \n",
    "Café déjà vu, 東京 🙂 👍 🇫🇷 I'm sure they'll say it's done.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def q8(real_sources, tmp_path_factory):
    src = real_sources("smollm2")
    out = tmp_path_factory.mktemp("smollm2-q8_0")
    res = plugin.export(source=src, output_dir=out, options=ExportOptions(precision="int8"), progress=NullProgress())
    return src, out, res


def test_smollm2_tokenizes_like_hugging_face_in_llama_cpp(q8):
    src, out, res = q8
    assert res.details["tokenizer"]["pre"] == "smollm"
    tok = src.hf_tokenizer()
    with plugin.load_model(path=out, options={}) as model:
        for text in TEXTS:
            assert model.tokenize(text) == tok.encode(text, add_special_tokens=False).ids, text


def test_smollm2_q8_0_answers_like_the_oracle(q8):
    src, out, _ = q8
    with plugin.load_model(path=out, options={}) as model:
        answer = model.generate("What is the capital of France?", max_new_tokens=12, chat=True)
    print(f"llamacpp Q8_0 real:smollm2: {answer!r}")
    assert "Paris" in answer
