"""Checkpoint -> mlx-lm folder in one streaming pass.

Plan every output tensor from ``source.tensor_infos()`` (names, dtypes, shapes, shard and offset),
write the shard headers, then stream: read one tensor from the memory-mapped checkpoint, encode
it in row chunks at its planned offset, advance the progress, move on. config.json, the index and
the tokenizer files are written last; the core moves the folder into place only on success.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.pipeline import ahead
from phi_quant.types import ExportOptions, ExportResult, Progress

from . import config_json, phimoe
from .config_json import LONGROPE_SHORT, longrope_mode
from .constants import (
    CHAT_TEMPLATE_FILE,
    CONFIG_FILE,
    DEFAULT_SHARD_BYTES,
    GENERATION_CONFIG_FILE,
    PRECISION_BITS,
    PRECISION_DTYPE,
    SAFETENSORS_DTYPE,
    SKIPPED_TOKENIZER_FILES,
)
from .encode import encode_chunks
from .layout import PlannedTensor, QuantParams, resolve_float_dtype, resolve_group_size
from .safetensors_stream import ShardedWriter, plan_shards

__all__ = ["export_mlx", "plan_for", "scheme_name", "parse_size", "context_length_of", "config_layout"]

_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "k": 1 << 10, "mb": 1 << 20, "m": 1 << 20, "gb": 1 << 30, "g": 1 << 30}


def parse_size(value: Any) -> int:
    """``"2GB"``, ``"500MB"``, ``1048576`` -> bytes (the ``shard_size`` option)."""
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip().lower().replace(" ", "")
        num = text.rstrip("kmgb")
        unit = text[len(num):]
        try:
            n = int(float(num) * _UNITS[unit])
        except (KeyError, ValueError):
            raise UnsupportedPrecisionError(f"shard_size {value!r} is not a size; write e.g. 2GB, 500MB or a byte count") from None
    if n <= 0:
        raise UnsupportedPrecisionError(f"shard_size must be positive, got {value!r}")
    return n


def scheme_name(precision: str, group_size: int | None = None) -> str:
    """``affine-int4-g64`` for quantized precisions, ``float16`` etc. otherwise."""
    if precision in PRECISION_BITS:
        return f"affine-int{PRECISION_BITS[precision]}-g{resolve_group_size(group_size)}"
    return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]


def context_length_of(options: ExportOptions) -> int | None:
    value = options.context_length if options.context_length is not None else options.get("context_length")
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UnsupportedPrecisionError(f"context_length {value!r} is not a whole number of tokens") from None
    if n <= 0:
        raise UnsupportedPrecisionError(f"context_length must be positive, got {n}")
    return n


def check_options(options: ExportOptions) -> None:
    if options.precision not in PRECISION_DTYPE:
        raise UnsupportedPrecisionError(
            f"mlx has no precision {options.precision!r}; choose one of {', '.join(PRECISION_DTYPE)}"
        )
    if options.symmetric:
        raise UnsupportedPrecisionError("mlx's affine quantization is asymmetric (scale and bias per group); drop --symmetric")
    if options.scheme and options.scheme not in ("affine", scheme_name(options.precision, options.group_size)):
        raise UnsupportedPrecisionError(
            f"mlx has no scheme {options.scheme!r}; it writes {scheme_name(options.precision, options.group_size)} "
            "(choose bits with --precision and the group with --group-size)"
        )


def plan_for(source, options: ExportOptions) -> list[PlannedTensor]:
    """The output plan for ``source`` under ``options`` (:mod:`.plan`; a budget reads the weights once)."""
    from .plan import plan_for as whole_plan

    check_options(options)
    return whole_plan(source, options)


def config_layout(cfg):
    """The module writing config.json for ``cfg``'s architecture (mlx-lm's ``phi3`` or ``phimoe``):
    both have ``check_supported(cfg)`` and ``build_config(cfg, plan, ...)``."""
    return phimoe if cfg.is_moe else config_json


def _float_dtype(source, options: ExportOptions) -> str:
    return (PRECISION_DTYPE[options.precision] or resolve_float_dtype(options.precision, options.get("dtype"))
            or SAFETENSORS_DTYPE[source.tensor_infos()[0].dtype])


def _copy_tokenizer(source, output_dir: Path) -> list[str]:
    files = []
    for name, path in sorted(source.tokenizer_files.items()):
        if name not in SKIPPED_TOKENIZER_FILES:
            shutil.copyfile(path, output_dir / name)
            files.append(name)
    has_template = "chat_template" in (source.tokenizer_config or {}) or any(f.endswith(".jinja") for f in files)
    if source.chat_template and not has_template:
        (output_dir / CHAT_TEMPLATE_FILE).write_text(source.chat_template, encoding="utf-8")
        files.append(CHAT_TEMPLATE_FILE)
    if source.generation_config:
        (output_dir / GENERATION_CONFIG_FILE).write_text(json.dumps(source.generation_config, indent=2), encoding="utf-8")
        files.append(GENERATION_CONFIG_FILE)
    return files


def _run_instructions(output_dir_name: str = "<this folder>") -> str:
    return (
        "```bash\n"
        "pip install mlx-lm            # macOS (Apple Silicon); on Linux: pip install 'mlx[cpu]' mlx-lm\n"
        f"mlx_lm.generate --model {output_dir_name} --prompt 'Hello' --max-tokens 64\n"
        "```\n"
        "```python\n"
        "from mlx_lm import load, generate\n"
        f"model, tokenizer = load('{output_dir_name}')\n"
        "print(generate(model, tokenizer, prompt='Hello', max_tokens=64))\n"
        "```\n"
    )


def export_mlx(source, output_dir: Path, options: ExportOptions, progress: Progress) -> ExportResult:
    """Write ``source`` as an mlx-lm folder into ``output_dir`` (see module doc)."""
    cfg = source.config
    layout = config_layout(cfg)
    layout.check_supported(cfg)
    source = phimoe.with_required_biases(source)  # mlx-lm's phimoe Linears all have a bias: zeros where absent
    plan = plan_for(source, options)
    context_length = context_length_of(options)
    shard_bytes = parse_size(options.get("shard_size", DEFAULT_SHARD_BYTES))
    shards = plan_shards((spec for p in plan for spec in p.specs), shard_bytes)
    by_name = {p.info.name: p for p in plan}

    from phi_quant.quant.digest import TensorDigest
    from phi_quant.quant.plan import recipe_context
    from phi_quant.quant.recipes import get_recipe

    from .plan import tensor_plan

    recipe = get_recipe(options.recipe)
    digests: dict[str, str] = {}
    writer = ShardedWriter(output_dir, shards)
    try:
        def encoded():  # (module, arrays) per chunk, then (None, tensor) when a tensor is done
            for tensor in source.tensors():
                planned = by_name.get(tensor.name)
                if planned is None:
                    raise UnsupportedPrecisionError(f"tensor {tensor.name} appeared in the stream but not in tensor_infos()")
                context = recipe_context(recipe, tensor.info(), source) if planned.quant is not None else None
                for chunk in encode_chunks(planned, tensor, recipe, context):
                    yield planned.module, chunk
                yield None, tensor

        digest = TensorDigest()
        for module, item in ahead(encoded()):  # encoding runs one step ahead of writing, in a worker thread
            if module is None:
                digests[item.name] = digest.hexdigest()
                digest = TensorDigest()
                progress.advance(item.nbytes, item.name)
                continue
            for name, (start, arr) in item.items():
                writer.write(name, arr, start)
                digest.update(name[len(module) + 1:], arr)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    files = list(shards.files)
    files.append(writer.write_index(total_parameters=cfg.parameter_count()))

    gs = resolve_group_size(options.group_size)
    default_quant = QuantParams(PRECISION_BITS[options.precision], gs) if options.precision in PRECISION_BITS else None
    float_dtype = _float_dtype(source, options)
    config = layout.build_config(cfg, plan, float_dtype=float_dtype, default_quant=default_quant, context_length=context_length)
    if (source.generation_config or {}).get("eos_token_id") is not None:  # what mlx-lm's load_config merges in
        config["eos_token_id"] = source.generation_config["eos_token_id"]
    (output_dir / CONFIG_FILE).write_text(json.dumps(config, indent=4), encoding="utf-8")
    files.append(CONFIG_FILE)
    files += _copy_tokenizer(source, output_dir)

    result = _result(cfg, plan, options, files, shards.total_bytes, float_dtype, context_length)
    result.quantization = tensor_plan(plan, options.recipe).summary(digests)
    return result


def _result(cfg, plan, options, files, total_bytes, float_dtype, context_length) -> ExportResult:
    quantized = [p for p in plan if p.quant is not None]
    kept = list({p.module: p for p in plan if p.info.role.is_matmul and p.quant is None and p.reason}.values())
    notes = []
    for p in kept:
        notes.append(f"{p.module} kept in {float_dtype}: {p.reason}")
    mode = longrope_mode(cfg, context_length)
    orig = cfg.rope.original_max_position
    if mode == LONGROPE_SHORT:
        notes.append(
            f"LongRoPE: written for contexts up to {orig} tokens (short factors at every length, exact versus "
            f"transformers there); prompts longer than {orig} tokens will degrade. Re-export without "
            "--context-length (or with a larger one) for long contexts."
        )
    elif mode is not None:
        notes.append(
            f"LongRoPE: mlx-lm applies the long factors at every length, so prompts up to {orig} tokens differ "
            f"from transformers (which uses the short factors there). Export with --context-length {orig} "
            "(or less) if you deploy at short contexts."
        )
    if cfg.sliding_window is not None:
        model = "phimoe" if cfg.is_moe else "phi3"
        notes.append(f"mlx-lm's {model} ignores the sliding window ({cfg.sliding_window}); attention is full.")
    modules = {p.module: p for p in quantized}  # a stacked module once, not once per expert
    bits = Counter(f"int{p.quant.bits}-g{p.quant.group_size}" for p in modules.values())
    details = {
        "scheme": scheme_name(options.precision, options.group_size),
        "float_dtype": float_dtype,
        "quantized_modules": dict(bits),
        "unquantized_modules": {p.module: p.reason for p in kept},
        "weights_bytes": total_bytes,
        "shards": [f for f in files if f.endswith(".safetensors")],
        "longrope_factors": mode,
        "context_length": context_length,
        "overrides": options.get("overrides"),
    }
    return ExportResult(
        files=files,
        scheme=details["scheme"],
        details=details,
        run_instructions=_run_instructions(),
        notes=notes,
    )
