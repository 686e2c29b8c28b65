"""real:smollm2 in the reference backend: fidelity on real text at fp16, int8 and int4, and the oracle's answer.

The reference backend's runtime is the numpy oracle itself, run on the dequantized values of the
core kernel's blocks, so these numbers are the cost of the weight rounding alone — the floor under
every vendor's runtime (which adds its own activation arithmetic). Bounds from the measurements on
the test window (the first 256 tokens of the evaluation text); the full-text numbers are in
docs/fidelity.md (`python bench/real_fidelity.py --backend reference`).
"""

from __future__ import annotations

from phi_quant.testing.real_kit import RealModelFidelity
from phi_quant.types import FidelityThresholds


class TestRealModel(RealModelFidelity):
    backend = "reference"
    # Measured on the test window (first 256 tokens, one sequence), default options: fp16 KL 1.27e-11
    # (max 1.41e-10), top-1 1.0, max |dlogit| 1.0e-4 (bf16 weights are exact in fp16: float rounding
    # only, so the bound is that noise floor); int8 (asym g32) KL 0.00308 (max 0.0474), top-1 0.957;
    # int4 (asym g32) KL 0.563 (max 6.09), top-1 0.637.
    thresholds = {
        "fp16": FidelityThresholds(kl_max=1e-9, top1_min=0.99, max_abs_logit=1e-3),
        "int8": FidelityThresholds(kl_max=0.006, top1_min=0.93),
        "int4": FidelityThresholds(kl_max=0.9, top1_min=0.58),
    }
