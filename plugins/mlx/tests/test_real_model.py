"""real:smollm2 in mlx's runtime: fidelity on real text at fp16, and the fp32 oracle's answer.

Bounds from the measurements on the test window (the first 256 tokens of the evaluation text);
the full-text numbers of every scheme are in docs/fidelity.md (`python bench/real_fidelity.py`).
The int8 and int4 exports here keep scales, biases and activations in float32 (``dtype=float32``):
mlx's CPU quantized matmul is ~6x slower in bfloat16 and ~30x slower in float16 than in float32, so
a default-dtype export (bfloat16, as mlx-lm convert writes from a bf16 checkpoint) would take ~5 min
per logits call here. That default is measured, not tested: int8 with bfloat16 scales gives KL 0.182
(max 1.85), top-1 0.7539, and answers "The capital of France is Paris, also known as the City of the
Press." where the oracle stops after "Paris." (see docs/backends/mlx.md).
"""

from __future__ import annotations

from phi_quant.testing.real_kit import RealModelFidelity
from phi_quant.types import FidelityThresholds


class TestRealModel(RealModelFidelity):
    backend = "mlx"
    # Measured on the test window (first 256 tokens of the evaluation text, one sequence), default
    # options: fp16 KL 3.24e-05 (max 9.3e-4), top-1 0.9961 (one flip), max |dlogit| 0.245 (mlx computes
    # in the weights' dtype, so fp16 activations too).
    # int8 (affine g64, float32 scales): KL 0.00343 (max 0.0461), top-1 0.949; int4 (affine g64,
    # float32 scales): KL 0.744 (max 4.4), top-1 0.555.
    thresholds = {
        "fp16": FidelityThresholds(kl_max=6e-5, top1_min=0.98),
        "int8": FidelityThresholds(kl_max=0.007, top1_min=0.92),
        "int4": FidelityThresholds(kl_max=1.2, top1_min=0.50),
    }
    answer_precisions = ("fp16", "int8")

    def export_options(self, precision: str) -> dict:
        return {"extra": {"dtype": "float32"}} if precision in ("int8", "int4") else {}
