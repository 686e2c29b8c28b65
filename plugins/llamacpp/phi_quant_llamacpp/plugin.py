"""The ``llamacpp`` backend: GGUF files for llama.cpp, verified in llama-cpp-python.

Registered through ``[project.entry-points.phi_quant] llamacpp = "phi_quant_llamacpp.plugin"``.
Every hook also works when called directly (``from phi_quant_llamacpp import plugin``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from phi_quant.hookspecs import hookimpl
from phi_quant.model.tensors import SourceTensor
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
from .encode import check_finite, encode_rows
from .export import export_gguf
from .ggml_lib import ggml_dequantize
from .hardware import detect
from .plan import plan_for, plan_model
from .runtime import LlamaCppModel

__all__ = ["SCHEME_THRESHOLDS", "THRESHOLDS", "OPTIONS", "backend_info", "detect_hardware", "supported_precisions", "quantize", "export", "load_model"]

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
        description="One GGUF file (arch phi3) for llama.cpp, LM Studio, Ollama; Q4_0/Q4_1/Q8_0 by our kernel, K-quants by llama.cpp",
        install_hint="pip install phi-quant-llamacpp",
        architectures=("phi3",),  # the phi_quant.arch layouts this backend writes
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
            default_group_size=BLOCK_SIZES[GGMLType[default]][0] if BLOCK_SIZES[GGMLType[default]][0] > 1 else None,
            group_sizes=(),  # each GGUF scheme fixes its block size (Q4_0: 32, K-quants: 256)
            symmetric=(),  # and its symmetry: choose Q4_0 (symmetric) or Q4_1 (with a minimum) by --scheme
        )
        for p, (default, others) in PRECISION_SCHEMES.items()
    ]


@hookimpl
def quantize(tensor: SourceTensor, options: ExportOptions, source=None) -> QuantizedTensor:
    """One tensor exactly as the GGUF stores it: ``arrays["blocks"]`` uint8 [rows, row_bytes].

    The type is the export plan's (``source`` given: the whole model's plan, K-quant mixes and
    budgets included; otherwise this tensor planned alone).
    """
    plan = plan_for(source, options) if source is not None else plan_model(None, [tensor.info()], options, strict=False)
    entry = plan.entry(tensor.name)
    ggml_type = entry.slot.type
    raw = tensor.raw()
    check_finite(raw, tensor.dtype, tensor.name)
    rows = raw.reshape(-1, raw.shape[-1]) if raw.ndim > 1 else raw.reshape(1, -1)
    recipe = get_recipe(options.recipe)
    blocks = encode_rows(rows, tensor.dtype, ggml_type, tensor.name, recipe, recipe_context(recipe, tensor.info(), source))
    shape = tuple(tensor.shape)
    blocks = np.ascontiguousarray(blocks).reshape(rows.shape[0], -1)
    return QuantizedTensor(
        name=entry.slot.name,
        scheme=ggml_type.name,
        shape=shape,
        arrays={"blocks": blocks},
        dequantize=lambda: ggml_dequantize(blocks, ggml_type, shape),
        meta={"ggml_type": int(ggml_type), "source": tensor.name, "file_scheme": plan.scheme, "reason": entry.reason,
              "recipe": recipe.name, "note": "bytes exactly as written to the GGUF"},
    )


@hookimpl
def export(source, output_dir: Path, options: ExportOptions, progress: Progress) -> ExportResult:
    return export_gguf(source, Path(output_dir), options, progress)


@hookimpl
def load_model(path: Path, options: dict) -> LlamaCppModel:
    return LlamaCppModel(Path(path), options)
