"""Export a checkpoint to an OpenVINO GenAI model directory, streaming one tensor at a time.

1. plan each tensor's scheme from the options (:mod:`.plan`: shapes only; a ratio below 1 or a
   size budget first streams the weights once to score them);
2. build the stateful decoder graph with placeholder weights and save its XML (the .bin offsets
   laid out by the serializer's rule, the file sparse until the weights arrive);
3. stream the checkpoint: pack each tensor (values from the core's recipe) and write its bytes at
   its constants' offsets, recording a sha256 of every tensor's bytes for the manifest;
4. write the tokenizer/detokenizer IRs, generation_config.json, config.json and tokenizer files.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from phi_quant.errors import ExportFailedError
from phi_quant.pipeline import ahead
from phi_quant.types import ExportOptions, ExportResult, Progress

from . import constants as C
from .decoder import build_decoder
from .ir_file import BinWriter, save_skeleton
from .packing import chunk_rows, pack
from .plan import plan_for, tensor_plan
from .schemes import TensorScheme, WeightPlan, resolve_options
from .tokenizer_ir import write_tokenizer_irs
from .weights import array_layout, packed_nbytes

__all__ = ["export_model", "run_instructions"]


def _generation_config(source) -> dict:
    gen = dict(getattr(source, "generation_config", None) or {})
    cfg = source.config
    if "eos_token_id" not in gen and cfg.eos_token_ids:
        gen["eos_token_id"] = list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else cfg.eos_token_ids[0]
    if "bos_token_id" not in gen and cfg.bos_token_id is not None:
        gen["bos_token_id"] = cfg.bos_token_id
    if "pad_token_id" not in gen and cfg.pad_token_id is not None:
        gen["pad_token_id"] = cfg.pad_token_id
    return gen


def run_instructions(path_hint: str = "<output dir>") -> str:
    return (
        "```python\n"
        "import openvino_genai as ov_genai\n"
        f"pipe = ov_genai.LLMPipeline(\"{path_hint}\", \"CPU\")  # or \"GPU\", \"NPU\"\n"
        "print(pipe.generate(\"Hello\", max_new_tokens=32))\n"
        "```\n"
        "optimum-intel: `OVModelForCausalLM.from_pretrained(path)` loads the same folder."
    )


def export_model(source, output_dir: Path, options: ExportOptions, progress: Progress) -> ExportResult:
    opts = resolve_options(options)
    infos = list(source.tensor_infos())
    plan = plan_for(source, options)
    files = _write_side_files(source, output_dir, opts)  # tokenizer conversion first: it fails fast
    digests = _write_model(source, output_dir, plan, progress, options.recipe)
    files = [C.MODEL_XML, C.MODEL_BIN] + files

    notes = list(plan.notes)
    if source.config.rope.is_longrope:
        notes.append(
            "LongRoPE: the graph picks the short or long factors per forward call from max(position_ids), "
            "like transformers; a generation that crosses the original context keeps earlier keys rotated "
            "with the short factors (transformers does the same)."
        )
    return ExportResult(
        files=files,
        scheme=opts.scheme_name,
        details={
            "weight_schemes": plan.counts(),
            "per_tensor": {name: s.label for name, s in plan.schemes.items()},
            "preset": opts.preset,
            "ratio": opts.ratio,
            "streaming": "skeleton IR saved with zero-page placeholders, weights written per tensor at their offsets",
        },
        run_instructions=run_instructions(),
        notes=notes,
        quantization=tensor_plan(plan, infos, options.recipe).summary(digests),
    )


def _write_model(source, output_dir: Path, plan: WeightPlan, progress: Progress, recipe: str | None = None) -> dict[str, str]:
    """Save the graph with placeholder weights, then stream every tensor into the .bin; returns
    the sha256 of each tensor's bytes as written."""
    from phi_quant.quant.digest import TensorDigest
    from phi_quant.quant.plan import recipe_context
    from phi_quant.quant.recipes import get_recipe

    r = get_recipe(recipe)
    digests: dict[str, str] = {}
    opts = plan.options
    graph = build_decoder(source.config, list(source.tensor_infos()), plan)
    graph.model.set_rt_info("phi-quant", ["phi_quant", "exporter"])
    graph.model.set_rt_info(opts.scheme_name, ["phi_quant", "scheme"])
    graph.model.set_rt_info(opts.precision, ["phi_quant", "precision"])
    offsets = save_skeleton(graph.model, output_dir / C.MODEL_XML, graph.bank.slots, graph.decompression_converts)
    slots = list(graph.bank.slots)
    graph.bank.release()
    del graph

    writer = BinWriter(output_dir / C.MODEL_BIN, slots, offsets)

    def packed():  # per block: (tensor, [(constant key, bytes, byte offset in the constant)]); then (tensor, None)
        for t in source.tensors():
            keys = writer.keys_for(t.name)
            if not keys:
                raise ExportFailedError(f"internal error: tensor {t.name} has no constant in the IR")
            scheme = plan.schemes.get(t.name, TensorScheme(C.FP32))
            layout = array_layout(scheme, t.shape) if t.role.is_matmul else {"weight": ("f32", t.shape)}
            context = recipe_context(r, t.info(), source) if scheme.is_int else None
            per_row = {k: (layout[k][0], math.prod(layout[k][1]) // t.shape[0] if len(t.shape) > 1 else 0) for k in keys}
            for r0, block in t.row_blocks(chunk_rows(t)):  # one block mapped at a time, the next one read ahead
                arrays = pack(t, scheme, recipe=r, context=context, block=block)
                del block
                yield t, [(k, arrays[k], packed_nbytes(ov_type, (r0 * n,))) for k, (ov_type, n) in per_row.items()]
            yield t, None

    try:
        digest = TensorDigest()
        for t, parts in ahead(packed()):  # packing runs one step ahead of writing, in a worker thread
            if parts is None:
                digests[t.name] = digest.hexdigest()
                digest = TensorDigest()
                progress.advance(t.nbytes, t.name)
                continue
            for key, array, at in parts:
                writer.write(t.name, key, array, at=at)
                digest.update(key, array)
            del parts
        missing = writer.missing()
        if missing:
            raise ExportFailedError(f"the tensor stream ended before these constants were written: {missing[:5]}")
    finally:
        writer.close()
    return digests


def _write_side_files(source, output_dir: Path, opts) -> list[str]:
    """Tokenizer IRs, generation/model configs and tokenizer files; returns their names."""
    files = write_tokenizer_irs(source.tokenizer_files, getattr(source, "chat_template", None), output_dir)
    (output_dir / C.GENERATION_CONFIG).write_text(json.dumps(_generation_config(source), indent=2))
    files.append(C.GENERATION_CONFIG)
    config_json = Path(source.path) / C.HF_CONFIG
    if config_json.exists():
        shutil.copyfile(config_json, output_dir / C.HF_CONFIG)
        files.append(C.HF_CONFIG)
    for name, path in sorted(source.tokenizer_files.items()):
        if name not in files and Path(path).is_file():
            shutil.copyfile(path, output_dir / name)
            files.append(name)
    if opts.primary.is_int:
        quant = {"bits": 4 if opts.precision == "int4" else 8, "sym": opts.primary.mode.endswith("_sym"),
                 "group_size": opts.primary.group_size or -1, "ratio": opts.ratio, "all_layers": opts.all_layers}
        text = json.dumps({"quantization_config": quant, "dtype": opts.precision}, indent=2)
        (output_dir / C.OPENVINO_CONFIG).write_text(text)
        files.append(C.OPENVINO_CONFIG)
    return files
