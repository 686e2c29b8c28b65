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
from .constants import BLOCK_SIZES, KERNEL_TYPES, PRECISION_SCHEMES, GGMLType
from .encode import check_finite, encode_rows
from .export import export_gguf, resolve_scheme
from .ggml_lib import ggml_dequantize, ggml_quantize
from .hardware import detect
from .layout import choose_type, gguf_name, parse_tensor_types
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

#: Block type the ``quantize`` hook uses for a K-quant mix (the file itself follows llama.cpp's mix rules).
_MIX_BASE = {"Q4_K_M": GGMLType.Q4_K, "Q5_K_M": GGMLType.Q5_K, "Q6_K": GGMLType.Q6_K}


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
def quantize(tensor: SourceTensor, options: ExportOptions) -> QuantizedTensor:
    """One tensor as it is stored in the GGUF: ``arrays["blocks"]`` uint8 [rows, row_bytes]."""
    scheme = resolve_scheme(options)
    name = gguf_name(tensor.role, tensor.layer)
    raw = tensor.raw()
    check_finite(raw, tensor.dtype, tensor.name)
    rows = raw.reshape(-1, raw.shape[-1]) if raw.ndim > 1 else raw.reshape(1, -1)
    if scheme in KERNEL_TYPES:
        overrides = parse_tensor_types(options.get("tensor_types"))
        ggml_type = choose_type(tensor.info(), scheme, overrides, kernel_only=True)[0].slot.type
        blocks = encode_rows(rows, tensor.dtype, ggml_type, tensor.name)
        note = "bytes exactly as written to the GGUF"
    else:
        ggml_type = GGMLType.F32 if tensor.role.is_norm else _MIX_BASE[scheme]
        if rows.shape[1] % BLOCK_SIZES[ggml_type][0]:
            ggml_type = GGMLType.Q8_0 if rows.shape[1] % 32 == 0 else GGMLType.F16
        f32 = tensor.to_float32().reshape(rows.shape)
        blocks = f32.view(np.uint8) if ggml_type == GGMLType.F32 else ggml_quantize(f32, ggml_type)
        note = f"{scheme} base type by ggml's quantizer; the exported file follows llama.cpp's per-tensor mix"
    shape = tuple(tensor.shape)
    blocks = np.ascontiguousarray(blocks).reshape(rows.shape[0], -1)
    return QuantizedTensor(
        name=name,
        scheme=ggml_type.name,
        shape=shape,
        arrays={"blocks": blocks},
        dequantize=lambda: ggml_dequantize(blocks, ggml_type, shape),
        meta={"ggml_type": int(ggml_type), "source": tensor.name, "file_scheme": scheme, "note": note},
    )


@hookimpl
def export(source, output_dir: Path, options: ExportOptions, progress: Progress) -> ExportResult:
    return export_gguf(source, Path(output_dir), options, progress)


@hookimpl
def load_model(path: Path, options: dict) -> LlamaCppModel:
    return LlamaCppModel(Path(path), options)
