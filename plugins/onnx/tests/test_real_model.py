"""real:smollm2 in onnx's runtime: fidelity on real text at fp16, int8 and int4, and the fp32 oracle's answer.

Bounds from the measurements on the test window (the first 256 tokens of the evaluation text);
the full-text numbers of every scheme are in docs/fidelity.md (`python bench/real_fidelity.py`).
"""

from __future__ import annotations

from phi_quant.testing.real_kit import RealModelFidelity
from phi_quant.types import FidelityThresholds


class TestRealModel(RealModelFidelity):
    backend = "onnx"
    # Measured on the test window (first 256 tokens of the evaluation text, one sequence), default
    # options (cpu target: float32 activations; MatMulNBits block 32, symmetric, accuracy_level 4):
    # fp16 KL 2.28e-11, top-1 1.0, max |dlogit| 1.8e-4 (bf16 weights are exact in fp16, so only float
    # rounding: the bound is that noise floor, not 2x); int8 KL 0.0114, top-1 0.9492; int4 KL 0.896,
    # top-1 0.5078.
    thresholds = {
        "fp16": FidelityThresholds(kl_max=1e-9, top1_min=0.99, max_abs_logit=1e-3),
        "int8": FidelityThresholds(kl_max=0.02, top1_min=0.92),
        "int4": FidelityThresholds(kl_max=1.5, top1_min=0.46),
    }
