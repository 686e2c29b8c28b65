"""The ``llamacpp`` backend: GGUF files for llama.cpp, verified in llama-cpp-python.

Registered through ``[project.entry-points.phi_quant] llamacpp = "phi_quant_llamacpp.plugin"``.
Every hook also works when called directly (``from phi_quant_llamacpp import plugin``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from phi_quant.hookspecs import hookimpl
from phi_quant.model.tensors import SourceTensor
from phi_quant.quant.plan import TensorPlan
from phi_quant.types import (
    BackendInfo,
    ExportOptions,
    ExportResult,
    FidelityThresholds,
    HardwareReport,
    OptionSpec,
    PrecisionSpec,
    Progress,
    QuantizedTensor,
)

from . import __version__
from phi_quant.quant.plan import recipe_context
from phi_quant.quant.recipes import get_recipe

from .constants import BLOCK_SIZES, PRECISION_SCHEMES, GGMLType
from . import phimoe
from .encode import encode_tensor_chunks
from .export import export_gguf, phimoe_mode
from .ggml_lib import ggml_dequantize
from .hardware import detect
from .plan import plan_for, plan_model
from .runtime import LlamaCppModel

__all__ = ["SCHEME_THRESHOLDS", "THRESHOLDS", "PHIMOE_SCHEME_THRESHOLDS", "OPTIONS", "backend_info", "detect_hardware",
           "supported_precisions", "quantize", "export", "load_model"]

#: Bounds per scheme from the measurements in docs/fidelity.md: about twice the worst tiny
#: variant's KL, top-1 a few points under its worst (the tiny random models are far more
#: sensitive to 4-bit rounding than trained ones). F32 is held to top-1 identical and
#: max |dlogit| <= 1e-3.
SCHEME_THRESHOLDS = {
    "F32": FidelityThresholds(kl_max=1e-8, top1_min=1.0, max_abs_logit=1e-3),  # measured <= 4.7e-11, 1.7e-4
    "F16": FidelityThresholds(kl_max=2e-5, top1_min=0.98),  # worst 7.0e-6, 0.994
    "BF16": FidelityThresholds(kl_max=1e-3, top1_min=0.95),  # worst 4.5e-4, 0.984
    "Q8_0": FidelityThresholds(kl_max=0.03, top1_min=0.90),  # worst 0.0136, 0.936
    "Q6_K": FidelityThresholds(kl_max=0.2, top1_min=0.75),  # worst 0.094, 0.820
    "Q5_K_M": FidelityThresholds(kl_max=0.45, top1_min=0.60),  # worst 0.226, 0.678
    "Q4_K_M": FidelityThresholds(kl_max=1.5, top1_min=0.40),  # worst 0.756, 0.479
    "Q4_1": FidelityThresholds(kl_max=2.5, top1_min=0.30),  # worst 1.33, 0.379
    "Q4_0": FidelityThresholds(kl_max=3.0, top1_min=0.30),  # worst 1.62, 0.363
}

#: Per precision: the bounds of its default scheme.
THRESHOLDS = {p: SCHEME_THRESHOLDS[default] for p, (default, _) in PRECISION_SCHEMES.items()}

#: The same for PhiMoE (tiny phimoe, default phimoe_weights=faithful, docs/fidelity.md). Even F32
#: is not exact: llama.cpp's phimoe graph gives both routed experts weight 1 where sparsemixer
#: shares a weight between near-tied experts (see phimoe.py); the tokens that meet one move
#: everything after them. About twice the measured KL, top-1 a few points under it.
PHIMOE_SCHEME_THRESHOLDS = {
    "F32": FidelityThresholds(kl_max=0.1, top1_min=0.93),  # measured 0.049, 0.966
    "F16": FidelityThresholds(kl_max=0.1, top1_min=0.93),  # 0.049, 0.966
    "BF16": FidelityThresholds(kl_max=0.15, top1_min=0.92),  # 0.075, 0.953
    "Q8_0": FidelityThresholds(kl_max=0.26, top1_min=0.85),  # 0.130, 0.891
    "Q6_K": FidelityThresholds(kl_max=1.1, top1_min=0.70),  # 0.558, 0.760
    "Q5_K_M": FidelityThresholds(kl_max=1.3, top1_min=0.58),  # 0.663, 0.643
    "Q4_K_M": FidelityThresholds(kl_max=3.2, top1_min=0.38),  # 1.58, 0.444
    "Q4_1": FidelityThresholds(kl_max=3.2, top1_min=0.32),  # 1.60, 0.377
    "Q4_0": FidelityThresholds(kl_max=3.6, top1_min=0.33),  # 1.78, 0.395
}

_DESCRIPTIONS = {
    "fp32": "F32: exact copy (1-D norms and rope factors are F32 in every scheme)",
    "fp16": "F16 (IEEE half, round to nearest even)",
    "bf16": "BF16 (lossless from bf16 checkpoints)",
    "int8": "Q8_0: 32-element blocks, fp16 scale, int8 values (8.5 bits/weight)",
    "int4": "Q4_0: 32-element blocks, fp16 scale, 4-bit values (4.5 bits/weight)",
}


#: Every ``--option`` the backend takes (the core refuses any other before export).
OPTIONS = (
    OptionSpec("scheme", "str", "GGUF scheme (same as --scheme)",
               choices=tuple(dict.fromkeys(x for d, o in PRECISION_SCHEMES.values() for x in (d, *o)))),
    OptionSpec("tensor_types", "any", "per-tensor types, e.g. token_embd=Q8_0,output=F16 (regexes allowed)"),
    OptionSpec("verbose", "bool", "show llama.cpp's quantizer log (K-quant schemes)", default=False),
)


@hookimpl
def backend_info() -> BackendInfo:
    return BackendInfo(
        options=OPTIONS,
        targets=(),  # a GGUF file runs on every device llama.cpp supports: there is nothing to target
        name="llamacpp",
        format="GGUF",
        runtime="llama.cpp (llama-cpp-python)",
        distribution="phi-quant-llamacpp",
        version=__version__,
        description="One GGUF file (arch phi3 or phimoe) for llama.cpp, LM Studio, Ollama; Q4_0/Q4_1/Q8_0 by our kernel, K-quants by llama.cpp",
        install_hint="pip install phi-quant-llamacpp",
        architectures=("phi3", "phimoe"),  # the phi_quant.arch layouts this backend writes
    )


@hookimpl
def detect_hardware() -> HardwareReport:
    return detect()


@hookimpl
def supported_precisions() -> list[PrecisionSpec]:
    return [
        PrecisionSpec(
            precision=p,
            scheme=default,
            description=_DESCRIPTIONS[p],
            schemes=tuple(others),
            thresholds=THRESHOLDS[p],
            arch_thresholds={"phimoe": PHIMOE_SCHEME_THRESHOLDS[default]},
            default_group_size=BLOCK_SIZES[GGMLType[default]][0] if BLOCK_SIZES[GGMLType[default]][0] > 1 else None,
            group_sizes=(),  # each GGUF scheme fixes its block size (Q4_0: 32, K-quants: 256)
            symmetric=(),  # and its symmetry: choose Q4_0 (symmetric) or Q4_1 (with a minimum) by --scheme
        )
        for p, (default, others) in PRECISION_SCHEMES.items()
    ]


@hookimpl
def quantize(tensor: SourceTensor, options: ExportOptions, source=None) -> QuantizedTensor:
    """One tensor exactly as the GGUF stores it: ``arrays["blocks"]`` uint8 [rows, row_bytes]; an
    expert's matrix is its slice of the stacked ``*_exps`` tensor ``name`` (``meta["expert"]``).

    The type is the export plan's (``source`` given: the whole model's plan, K-quant mixes and
    budgets included, and a PhiMoE checkpoint's weight rewrite, :mod:`.phimoe`; otherwise this
    tensor planned alone, its values as they are).
    """
    plan = plan_for(source, options) if source is not None else plan_model(None, [tensor.info()], options, strict=False)
    entry = plan.entry(tensor.name)
    ggml_type = entry.slot.type
    rows = tensor.raw().reshape(-1, tensor.shape[-1]) if len(tensor.shape) > 1 else tensor.raw().reshape(1, -1)
    recipe = get_recipe(options.recipe)
    rewrite = None
    if source is not None:
        mode = phimoe_mode(source, options)
        rewrite = phimoe.rewrite_for(tensor.info(), mode) if mode is not None else None
    chunks = list(encode_tensor_chunks(tensor, ggml_type, recipe, recipe_context(recipe, tensor.info(), source), rewrite))
    blocks = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    shape = tuple(tensor.shape)
    blocks = np.ascontiguousarray(blocks).reshape(rows.shape[0], -1)
    return QuantizedTensor(
        name=entry.slot.name,
        scheme=ggml_type.name,
        shape=shape,
        arrays={"blocks": blocks},
        dequantize=lambda: ggml_dequantize(blocks, ggml_type, shape),
        meta={"ggml_type": int(ggml_type), "source": tensor.name, "file_scheme": plan.scheme, "reason": entry.reason,
              "recipe": recipe.name, "note": "bytes exactly as written to the GGUF", "expert": tensor.expert},
    )


@hookimpl
def tensor_plan(source, options: ExportOptions) -> TensorPlan:
    """Every tensor's GGUF type as the core sees it (the plan export and quantize follow)."""
    return plan_for(source, options).tensor_plan


@hookimpl
def export(source, output_dir: Path, options: ExportOptions, progress: Progress) -> ExportResult:
    return export_gguf(source, Path(output_dir), options, progress)


@hookimpl
def load_model(path: Path, options: dict) -> LlamaCppModel:
    return LlamaCppModel(Path(path), options)
