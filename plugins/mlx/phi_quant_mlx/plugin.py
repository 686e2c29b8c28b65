"""The ``mlx`` backend: the folder layout mlx-lm loads, verified by running it with mlx-lm.

Registered through ``[project.entry-points.phi_quant] mlx = "phi_quant_mlx.plugin"``. Every hook
also works when called directly (``from phi_quant_mlx import plugin``).
Options (``--option key=value``): ``overrides=down_proj=8,lm_head=8:32,embed_tokens=off``,
``shard_size=2GB``, ``context_length=4096`` (same as ``--context-length``), ``dtype=float16``
(int exports: the dtype weights are cast to before quantizing, and of scales, biases, norms).
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
from .constants import DEFAULT_GROUP_SIZE, GROUP_SIZES, QUANT_MODE
from .encode import encode_whole
from .export import check_options, export_mlx, plan_for, scheme_name
from .hardware import detect
from .layout import FLOAT_DTYPES, PlannedTensor
from .plan import plan_model
from .runtime import MLXModel

__all__ = ["THRESHOLDS", "PHIMOE_THRESHOLDS", "OPTIONS", "backend_info", "detect_hardware", "supported_precisions", "quantize", "export", "load_model"]

#: Bounds per precision from the measurements in docs/fidelity.md (worst tiny variant, about
#: 1.5x margin), default options (scales in the checkpoint's dtype, as mlx-lm convert does), on
#: the shared prompts with the default "auto" LongRoPE policy. fp32 is held to top-1 identical
#: and max |dlogit| <= 1e-3. The tiny random models are far more sensitive to weight noise than
#: trained ones: these bounds describe them, not a real model's quality.
THRESHOLDS = {
    "fp32": FidelityThresholds(kl_max=1e-8, top1_min=1.0, max_abs_logit=1e-3),
    "fp16": FidelityThresholds(kl_max=1e-4, top1_min=0.98),
    "bf16": FidelityThresholds(kl_max=5e-3, top1_min=0.95),
    "int8": FidelityThresholds(kl_max=0.15, top1_min=0.70),
    "int4": FidelityThresholds(kl_max=3.0, top1_min=0.20),
}

#: The same for the tiny PhiMoE (docs/fidelity.md, measured value in each comment), same margin.
#: mlx-lm computes PhiMoE as the model does (fp32 meets THRESHOLDS["fp32"]); below fp32 the mean
#: is set by the few tokens whose expert choice flips when the router's inputs move (sparsemixer's
#: picks and weights jump there): the median position stays as close as a dense model's.
PHIMOE_THRESHOLDS = {
    "fp16": FidelityThresholds(kl_max=1.5e-2, top1_min=0.95),  # 9.47e-3, 0.977
    "bf16": FidelityThresholds(kl_max=0.12, top1_min=0.90),  # 7.49e-2, 0.951
    "int8": FidelityThresholds(kl_max=0.5, top1_min=0.65),  # 0.334, 0.747
    "int4": FidelityThresholds(kl_max=3.2, top1_min=0.25),  # 2.12, 0.370
}

_DESCRIPTIONS = {
    "fp32": "float32 safetensors (exact copy of the weights)",
    "fp16": "float16 safetensors; mlx computes in float16",
    "bf16": "bfloat16 safetensors (lossless from bf16 checkpoints); mlx computes in bfloat16",
    "int8": "mlx affine 8-bit, group 64: uint32-packed weights + scale and bias per group (8.5 bits/weight)",
    "int4": "mlx affine 4-bit, group 64: uint32-packed weights + scale and bias per group (4.5 bits/weight)",
}


_QUANTIZED = ("int8", "int4")

#: Every ``--option`` of this backend (the core refuses any other before export).
OPTIONS = (
    OptionSpec("overrides", "any", "per-module bits/group, e.g. down_proj=8,lm_head=8:32,embed_tokens=off",
               precisions=_QUANTIZED),
    OptionSpec("shard_size", "str", "largest safetensors shard, e.g. 2GB, 500MB or a byte count", "5GB"),
    OptionSpec("context_length", "int", "the context you deploy with (also --context-length)", min=1),
    OptionSpec("dtype", "str", "dtype of scales, biases and unquantized tensors", choices=tuple(FLOAT_DTYPES),
               precisions=_QUANTIZED),
)


@hookimpl
def backend_info() -> BackendInfo:
    return BackendInfo(
        options=OPTIONS,
        targets=(),  # mlx-lm runs the same folder on Apple silicon and on CPU: there is nothing to target
        name="mlx",
        format="MLX safetensors",
        runtime="mlx-lm",
        distribution="phi-quant-mlx",
        version=__version__,
        description="The folder mlx_lm.load opens (config.json + safetensors shards); affine int4/int8 bit-identical to mx.quantize",
        install_hint="pip install phi-quant-mlx",
        architectures=("phi3", "phimoe"),  # the phi_quant.arch layouts this backend writes (mlx-lm's phi3, phimoe)
    )


@hookimpl
def detect_hardware() -> HardwareReport:
    return detect()


@hookimpl
def supported_precisions() -> list[PrecisionSpec]:
    quantized = ("int8", "int4")
    return [
        PrecisionSpec(
            precision=p,
            scheme=scheme_name(p),
            description=_DESCRIPTIONS[p],
            schemes=(QUANT_MODE,) if p in quantized else (),
            thresholds=THRESHOLDS[p],
            default_group_size=DEFAULT_GROUP_SIZE if p in quantized else None,
            group_sizes=GROUP_SIZES if p in quantized else (),
            symmetric=(False,) if p in quantized else (),  # affine: a scale and a bias per group
            arch_thresholds={"phimoe": PHIMOE_THRESHOLDS[p]} if p in PHIMOE_THRESHOLDS else {},
        )
        for p in ("fp32", "fp16", "bf16", "int8", "int4")
    ]


def _planned(tensor: SourceTensor, options: ExportOptions, source=None) -> PlannedTensor:
    """The export's decision for this tensor: from the whole model's plan when ``source`` is given,
    else the tensor planned alone (overrides that name other modules are ignored)."""
    if source is not None:
        return next(p for p in plan_for(source, options) if p.info.name == tensor.name)
    check_options(options)
    return plan_model(None, [tensor.info()], options, strict=False)[0]


_PHI_DTYPE = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


@hookimpl
def quantize(tensor: SourceTensor, options: ExportOptions, source=None) -> QuantizedTensor:
    """One tensor as written: ``{"weight": uint32, "scales", "biases"}`` when quantized, else ``{"weight"}``
    (``{"bias"}`` for a bias; an expert's matrix is its slice of the stacked SwitchGLU tensors)."""
    from phi_quant.quant.plan import recipe_context
    from phi_quant.quant.recipes import get_recipe

    planned = _planned(tensor, options, source)
    recipe = get_recipe(options.recipe)
    context = recipe_context(recipe, tensor.info(), source) if planned.quant is not None else None
    arrays = encode_whole(planned, tensor.raw(), recipe, context)
    arrays = {name[len(planned.module) + 1:]: arr for name, arr in arrays.items()}
    shape = tuple(tensor.shape)
    quant = planned.quant

    def dequantize() -> np.ndarray:
        from phi_quant import quant as q

        if quant is None:
            w = arrays[planned.param]
            if planned.dtype == "BF16":
                return (w.astype(np.uint32) << 16).view(np.float32).reshape(shape)
            return w.astype(np.float32).reshape(shape)
        return q.mlx_dequantize(arrays["weight"], arrays["scales"], arrays["biases"], bits=quant.bits,
                                group_size=quant.group_size, src_dtype=_PHI_DTYPE[planned.dtype]).reshape(shape)

    return QuantizedTensor(
        name=f"{planned.module}.{planned.param}",
        scheme=f"affine-int{quant.bits}-g{quant.group_size}" if quant else planned.dtype.lower(),
        shape=shape,
        arrays=arrays,
        dequantize=dequantize,
        meta={"module": planned.module, "source": tensor.name, "dtype": planned.dtype, "reason": planned.reason,
              "expert": tensor.expert},
    )


@hookimpl
def tensor_plan(source, options: ExportOptions) -> TensorPlan:
    """Every module's quantization as the core sees it (the plan export and quantize follow)."""
    from .plan import tensor_plan as core_plan

    return core_plan(plan_for(source, options), options.recipe)


@hookimpl
def export(source, output_dir: Path, options: ExportOptions, progress: Progress) -> ExportResult:
    return export_mlx(source, Path(output_dir), options, progress)


@hookimpl
def load_model(path: Path, options: dict) -> MLXModel:
    return MLXModel(Path(path), options)

