"""real:smollm2 through this backend: its "smollm" pre-tokenizer is carried into the GGUF, llama.cpp
tokenizes like Hugging Face, fidelity on real text at fp16, int8 and int4, and the fp32 oracle's answer.

Bounds from the measurements on the test window (the first 256 tokens of the evaluation text);
the full-text numbers of every scheme are in docs/fidelity.md (`python bench/real_fidelity.py`).
"""

from __future__ import annotations

import json

from phi_quant.manifest import MANIFEST_NAME
from phi_quant.testing.real_kit import RealModelFidelity
from phi_quant.types import FidelityThresholds
from phi_quant_llamacpp import plugin

TEXTS = [
    "Pi is 3.14159265, 1,000,000 + 2024 = 1002024; ½ and ¾ too.",
    "  two  spaces,   three   spaces\tand a tab\n\nnew\r\nlines   \n",
    "Café déjà vu, 東京 🙂 👍 🇫🇷 I'm sure they'll say it's done.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]


class TestRealModel(RealModelFidelity):
    backend = "llamacpp"
    # Measured on the test window (first 256 tokens of the evaluation text, one sequence), llama.cpp's
    # default schemes: F16 KL 3.02e-06, top-1 0.9961 (one flip); Q8_0 KL 0.0102, top-1 0.9297 (its CPU
    # kernels quantize the activations to 8 bits too); Q4_0 KL 0.894, top-1 0.5352.
    thresholds = {
        "fp16": FidelityThresholds(kl_max=6e-6, top1_min=0.98),
        "int8": FidelityThresholds(kl_max=0.02, top1_min=0.90),
        "int4": FidelityThresholds(kl_max=1.5, top1_min=0.48),
    }


def test_smollm2_tokenizes_like_hugging_face_in_llama_cpp(real_sources, real_exports):
    out = real_exports("llamacpp", "int8")  # the same export TestRealModel checks
    details = json.loads((out / MANIFEST_NAME).read_text())["details"]
    assert details["tokenizer"]["pre"] == "smollm"
    tok = real_sources("smollm2").hf_tokenizer()
    with plugin.load_model(path=out, options={}) as model:
        for text in TEXTS:
            assert model.tokenize(text) == tok.encode(text, add_special_tokens=False).ids, text
