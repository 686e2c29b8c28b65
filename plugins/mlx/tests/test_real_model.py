"""real:smollm2 in mlx's runtime: fidelity on real text at fp16, and the fp32 oracle's answer.

Bounds from the measurements on the test window (the first 256 tokens of the evaluation text);
the full-text numbers of every scheme are in docs/fidelity.md (`python bench/real_fidelity.py`).
int8 is measured but not tested yet: with mlx-lm's default bf16 scales and biases it gives KL 0.182
(max 1.85), top-1 0.7539, and answers "The capital of France is Paris, also known as the City of
the Press." where the oracle stops after "Paris." (see docs/backends/mlx.md); int4 was not measured.
"""

from __future__ import annotations

from phi_quant.testing.real_kit import RealModelFidelity
from phi_quant.types import FidelityThresholds


class TestRealModel(RealModelFidelity):
    backend = "mlx"
    # Measured on the test window (first 256 tokens of the evaluation text, one sequence), default
    # options: fp16 KL 3.24e-05 (max 9.3e-4), top-1 0.9961 (one flip), max |dlogit| 0.245 (mlx computes
    # in the weights' dtype, so fp16 activations too).
    thresholds = {
        "fp16": FidelityThresholds(kl_max=6e-5, top1_min=0.98),
    }
    answer_precisions = ("fp16",)
