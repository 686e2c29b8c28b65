"""phi-quant backend ``openvino``: stateful OpenVINO IR for OpenVINO GenAI (CPU, GPU, NPU).

Architectures: ``phi3`` and ``phimoe`` (Phi-3.5-MoE: :mod:`.phimoe`, routers kept in float).

Precisions: fp32, fp16 (f16 constants decompressed to f32), int8 (NNCF INT8_ASYM per channel, or
INT8_SYM) and int4 (NNCF INT4_ASYM/INT4_SYM, group 128 by default, embeddings and lm_head at the
int8 backup). Options: ``--group-size``, ``--symmetric``, ``--option ratio=0.8``,
``--option all_layers=true``, ``--option backup=int8_sym``, ``--option preset=npu|npu-g128|cpu|gpu``
(``--target npu`` selects the NPU preset). Details: docs/backends/openvino.md.
"""

from __future__ import annotations

from pathlib import Path

from phi_quant.hookspecs import hookimpl
from phi_quant.quant.plan import TensorPlan
from phi_quant.types import (
    BackendInfo,
    ExportOptions,
    ExportResult,
    FidelityThresholds,
    HardwareReport,
    OptionSpec,
    PrecisionSpec,
    QuantizedTensor,
)

from . import __version__
from . import constants as C
from .schemes import PRESETS

__all__ = ["THRESHOLDS", "PHIMOE_THRESHOLDS", "OPTIONS", "backend_info", "detect_hardware", "supported_precisions",
           "quantize", "export", "load_model"]

#: Bounds from docs/fidelity.md (## OpenVINO): the worst value measured on the tiny variants (CPU,
#: f32 inference, f32 KV cache, no dynamic quantization) with headroom. fp16 is lossless on these
#: bf16 checkpoints (bf16 values fit f16 exactly unless tiny/huge), so its bound mirrors fp32's.
THRESHOLDS = {
    "fp32": FidelityThresholds(kl_max=1e-6, top1_min=1.0, max_abs_logit=1e-3),  # measured KL <= 1.8e-11, |d| <= 5e-5
    "fp16": FidelityThresholds(kl_max=1e-4, top1_min=0.99, max_abs_logit=0.05),  # measured as fp32
    "int8": FidelityThresholds(kl_max=0.03, top1_min=0.85),  # measured KL <= 0.0116, top-1 >= 0.92
    "int4": FidelityThresholds(kl_max=2.0, top1_min=0.3),  # measured KL <= 1.33, top-1 >= 0.40 (random tiny weights)
}

#: Bounds for the tiny PhiMoE (docs/fidelity.md, ## OpenVINO: PhiMoE; bench/openvino_phimoe_fidelity.py):
#: the graph is exact (fp32 KL 8.8e-12), but integer weights flip which experts some tokens are
#: routed to, a discrete change that costs more than on the dense variants. fp32/fp16 keep THRESHOLDS.
PHIMOE_THRESHOLDS = {
    "int8": FidelityThresholds(kl_max=0.45, top1_min=0.8),  # measured KL 0.212 (sym 0.184), top-1 >= 0.894
    "int4": FidelityThresholds(kl_max=3.5, top1_min=0.3),  # measured KL <= 1.82, top-1 >= 0.413 (all int4 options)
}


#: Every ``--option`` of this backend (the core refuses any other before export).
OPTIONS = (
    OptionSpec("ratio", "float", "share of the decoder matmuls at int4 (the rest at the backup)", C.DEFAULT_RATIO,
               min=0.0, max=1.0, precisions=("int4",)),
    OptionSpec("all_layers", "bool", "int4 for embeddings and lm_head too", False, precisions=("int4",)),
    OptionSpec("backup", "str", "mode of the layers int4 leaves out", C.INT8_ASYM, (C.INT8_ASYM, C.INT8_SYM),
               precisions=("int4",)),
    OptionSpec("preset", "str", "named int4 preset (--target npu selects npu)", choices=tuple(PRESETS),
               precisions=("int4",)),
)
_GROUPS = (16, 32, 64, 128, 256, -1)  # -1: one scale per output channel


@hookimpl
def backend_info() -> BackendInfo:
    return BackendInfo(
        options=OPTIONS,
        targets=("cpu", "gpu", "npu"),
        name="openvino",
        format="OpenVINO IR",
        runtime="openvino_genai.LLMPipeline",
        distribution="phi-quant-openvino",
        version=__version__,
        description="stateful OpenVINO IR with NNCF-style compressed weights, for Intel CPU/GPU/NPU",
        install_hint="pip install phi-quant-openvino",
        architectures=("phi3", "phimoe"),  # the phi_quant.arch layouts this backend writes
    )


@hookimpl
def detect_hardware() -> HardwareReport:
    from .hardware import detect

    return detect()


@hookimpl
def supported_precisions() -> list[PrecisionSpec]:
    both = (True, False)
    return [
        PrecisionSpec("fp32", "fp32", "f32 constants", thresholds=THRESHOLDS["fp32"], group_sizes=(), symmetric=()),
        PrecisionSpec("fp16", "fp16", "f16 constants decompressed to f32 (OpenVINO's compress_to_fp16 form)",
                      thresholds=THRESHOLDS["fp16"], group_sizes=(), symmetric=()),
        PrecisionSpec("int8", "int8_asym_cw", "NNCF INT8_ASYM per output channel (--symmetric: INT8_SYM)",
                      schemes=("int8_sym_cw",), thresholds=THRESHOLDS["int8"], group_sizes=(), symmetric=both,
                      arch_thresholds={"phimoe": PHIMOE_THRESHOLDS["int8"]}),
        PrecisionSpec("int4", "int4_asym_g128+int8_asym_cw-emb",
                      "NNCF INT4_ASYM group 128; embeddings and lm_head INT8_ASYM (--symmetric: INT4_SYM; "
                      "--option preset=npu: INT4_SYM per channel)",
                      schemes=("int4_sym_g128", "int4_sym_cw"), thresholds=THRESHOLDS["int4"],
                      arch_thresholds={"phimoe": PHIMOE_THRESHOLDS["int4"]},
                      default_group_size=C.DEFAULT_INT4_GROUP, group_sizes=_GROUPS, symmetric=both),
    ]


@hookimpl
def quantize(tensor, options: ExportOptions, source=None) -> QuantizedTensor:
    """One tensor's IR constants exactly as ``export`` writes them, from the export's own plan
    (``source`` given: the whole model's, ratio and budgets included; otherwise this tensor alone)."""
    from phi_quant.quant.plan import recipe_context
    from phi_quant.quant.recipes import get_recipe

    from .packing import dequantize, pack
    from .plan import plan_for, single_tensor_scheme
    from .schemes import TensorScheme

    if source is not None:
        scheme = plan_for(source, options).schemes.get(tensor.name, TensorScheme(C.FP32))
    else:
        scheme = single_tensor_scheme(tensor.info(), options)
    recipe = get_recipe(options.recipe)
    context = recipe_context(recipe, tensor.info(), source) if scheme.is_int else None
    arrays = pack(tensor, scheme, None, recipe, context)
    shape = tuple(tensor.shape)
    return QuantizedTensor(
        name=tensor.name,
        scheme=scheme.label,
        shape=shape,
        arrays=arrays,
        dequantize=(lambda: dequantize(arrays, scheme, shape)) if len(shape) == 2 else (lambda: arrays["weight"]),
        meta={"mode": scheme.mode, "group_size": scheme.group_size, "recipe": recipe.name},
    )


@hookimpl
def tensor_plan(source, options: ExportOptions) -> TensorPlan:
    """Every constant's NNCF scheme as the core sees it (the plan export and quantize follow)."""
    from .plan import plan_for
    from .plan import tensor_plan as core_plan

    return core_plan(plan_for(source, options), source.tensor_infos(), options.recipe)


@hookimpl
def export(source, output_dir: Path, options: ExportOptions, progress) -> ExportResult:
    from .export import export_model

    return export_model(source, Path(output_dir), options, progress)


@hookimpl
def load_model(path: Path, options: dict):
    from .runtime import OpenVINOModel

    return OpenVINOModel(Path(path), options)
