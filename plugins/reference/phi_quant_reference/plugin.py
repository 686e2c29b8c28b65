"""The ``reference`` backend: the worked example of ``docs/plugin-authoring.md``.

It writes every tensor of the checkpoint to its own small safetensors file (quantized by the
core kernel, see :mod:`.weights`), a ``reference.json`` index, ``config.json`` and the tokenizer
files; ``load_model`` decodes the weights back to float32 and runs them through the core's
numpy oracle. Registered by ``[project.entry-points.phi_quant] reference = "phi_quant_reference.plugin"``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.numpy import save_file

from phi_quant import quant
from phi_quant.hookspecs import hookimpl
from phi_quant.model.tensors import SourceTensor
from phi_quant.types import (
    BackendInfo,
    ExportOptions,
    ExportResult,
    FidelityThresholds,
    HardwareReport,
    PrecisionSpec,
    Progress,
    QuantizedTensor,
)

from . import __version__
from .runtime import INDEX_NAME, ReferenceModelRunner
from phi_quant.quant.digest import digest_arrays
from phi_quant.quant.encode import check_recipe
from phi_quant.quant.plan import PlannedTensor, TensorPlan

from .weights import DEFAULT_SCHEMES, encode, resolve_scheme, tensor_scheme

NAME = "reference"
#: The hook contract this module implements (phi_quant.types.HOOK_CONTRACT_VERSION when written).
HOOK_CONTRACT = "1.4"
#: The architectures (phi_quant.arch names) it writes. Tensors are stored by name and run by the
#: core's oracle, so any architecture the core reads would work; each is listed once the kit passes on it.
ARCHITECTURES = ("phi3",)

#: What each precision promises against the oracle: measured on the four tiny variants
#: (docs/fidelity.md, "reference backend"), with margin.
THRESHOLDS = {
    "fp32": FidelityThresholds(kl_max=1e-6, top1_min=1.0, max_abs_logit=1e-3),
    "fp16": FidelityThresholds(kl_max=1e-6, top1_min=0.99, max_abs_logit=1e-3),
    "bf16": FidelityThresholds(kl_max=1e-6, top1_min=1.0, max_abs_logit=1e-3),
    "int8": FidelityThresholds(kl_max=2e-2, top1_min=0.90),
    "int4": FidelityThresholds(kl_max=3.0, top1_min=0.25),
}

_DESCRIPTIONS = {
    "fp32": "float32 copy",
    "fp16": "IEEE half (round to nearest even)",
    "bf16": "bfloat16 bits (lossless from bf16 checkpoints)",
    "int8": "8-bit asymmetric, groups of 32 along the input dimension, float32 scales",
    "int4": "4-bit asymmetric, groups of 32 along the input dimension, float32 scales",
}


@hookimpl
def backend_info() -> BackendInfo:
    return BackendInfo(
        name=NAME,
        format="safetensors (one file per tensor) + reference.json",
        runtime="numpy (phi_quant.reference)",
        version=__version__,
        description="Reference backend: plain safetensors run by the numpy oracle; the plugin authoring example",
        hook_contract=HOOK_CONTRACT,
        architectures=ARCHITECTURES,
        options=(),  # takes no --option: the core refuses any
        targets=(),
    )  # distribution and install hint: filled in by the core from the entry point's metadata


@hookimpl
def detect_hardware() -> HardwareReport:
    return HardwareReport(backend=NAME, available=True, devices=[{"name": "CPU", "type": "cpu"}],
                          notes=["runs anywhere numpy runs; meant for checking, not for speed"])


@hookimpl
def supported_precisions() -> list[PrecisionSpec]:
    specs = []
    for precision, scheme in DEFAULT_SCHEMES.items():
        others = ()
        if scheme.bits:
            others = tuple(f"int{scheme.bits}_{kind}_g{g}" for kind in ("asym", "sym") for g in (32, 64, 128))
        specs.append(PrecisionSpec(precision, scheme.name, _DESCRIPTIONS[precision], schemes=others,
                                   thresholds=THRESHOLDS[precision], default_group_size=scheme.group_size,
                                   group_sizes=tuple(quant.MATMULNBITS_BLOCK_SIZES) if scheme.bits else (),
                                   symmetric=(True, False) if scheme.bits else ()))
    return specs


def plan(infos, options: ExportOptions) -> TensorPlan:
    """Every tensor's core scheme; refuses a recipe that cannot fill one of them."""
    scheme = resolve_scheme(options)
    entries = [PlannedTensor(i, i.name, tensor_scheme(i, scheme)) for i in infos]
    for p in entries:
        check_recipe(options.recipe, p.scheme, p.name)
    return TensorPlan(entries, (options.recipe or "rtn"))


@hookimpl
def quantize(tensor: SourceTensor, options: ExportOptions, source=None) -> QuantizedTensor:
    plan([tensor.info()], options)  # refuse bad options as export would
    return encode(tensor, resolve_scheme(options), options.recipe, source)


@hookimpl
def tensor_plan(source, options: ExportOptions) -> TensorPlan:
    """Every tensor's scheme (one per precision for every matrix, norms in float32)."""
    return plan(source.tensor_infos(), options)


@hookimpl
def export(source, output_dir: Path, options: ExportOptions, progress: Progress) -> ExportResult:
    scheme = resolve_scheme(options)  # refuse bad options before writing anything
    tensor_plan = plan(source.tensor_infos(), options)
    (output_dir / "weights").mkdir()
    index: dict = {"format": "phi-quant-reference", "version": 1, "scheme": scheme.name, "tensors": {}}
    digests = {}
    for tensor in source.tensors():  # one tensor in memory at a time
        qt = encode(tensor, scheme, options.recipe, source)
        file = f"weights/{tensor.name}.safetensors"
        save_file(qt.arrays, str(output_dir / file))
        digests[tensor.name] = digest_arrays(qt.arrays)
        index["tensors"][tensor.name] = {"file": file, "scheme": qt.scheme, "shape": list(qt.shape)}
        progress.advance(tensor.nbytes, tensor.name)

    files = [entry["file"] for entry in index["tensors"].values()]
    extras = [Path(source.path) / "config.json", Path(source.path) / "generation_config.json",
              *source.tokenizer_files.values()]
    for path in extras:
        if Path(path).is_file():
            shutil.copy(path, output_dir / Path(path).name)
            files.append(Path(path).name)
    (output_dir / INDEX_NAME).write_text(json.dumps(index, indent=1))
    files.append(INDEX_NAME)
    return ExportResult(
        files=files,
        scheme=scheme.name,
        details={"tensors": len(index["tensors"]), "group_size": scheme.group_size, "symmetric": scheme.symmetric},
        run_instructions="```sh\nphi-quant run <this directory> --prompt \"Hello\"\n```",
        notes=["RMSNorm weights are stored as float32 in every scheme"],
        quantization=tensor_plan.summary(digests),
    )


@hookimpl
def load_model(path: Path, options: dict) -> ReferenceModelRunner:
    return ReferenceModelRunner(Path(path))
