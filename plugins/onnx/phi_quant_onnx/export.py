"""Export a streamed Phi checkpoint as an onnxruntime-genai model folder.

Reads each tensor once from the memory-mapped checkpoint, writes it (converted or quantized) to
``model.onnx.data`` and emits its nodes; then saves the small ``model.onnx`` proto,
``genai_config.json`` and the tokenizer files. Never imports torch or transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phi_quant.types import ExportOptions, ExportResult, NullProgress, Progress

from . import constants as C
from .decoder import Phi3OnnxDecoder
from .phimoe import PhiMoEOnnxDecoder
from .external_data import ExternalDataWriter
from .genai_config import build_genai_config
from .settings import OnnxSettings, settings_from_options
from .tokenizer_files import copy_tokenizer_files

__all__ = ["export_model", "run_instructions", "ARCHITECTURES"]

#: The graph builder of each phi_quant.arch layout this backend writes.
_DECODERS = {"phi3": Phi3OnnxDecoder, "phimoe": PhiMoEOnnxDecoder}
ARCHITECTURES = tuple(_DECODERS)


def export_model(source: Any, output_dir: Path, options: ExportOptions, progress: Progress | None = None) -> ExportResult:
    """Write ``source`` into ``output_dir`` (an empty directory) for onnxruntime-genai."""
    progress = progress or NullProgress()
    output_dir = Path(output_dir)
    config = source.config
    settings = settings_from_options(options, config)
    with ExternalDataWriter(output_dir, C.DATA_FILE) as writer:
        decoder = _DECODERS[config.arch_name](config, settings, writer)
        for tensor in source.tensors():
            decoder.consume(tensor)
            progress.advance(tensor.nbytes, tensor.name)
        model = decoder.finish()
    (output_dir / C.MODEL_FILE).write_bytes(model.SerializeToString())
    genai = build_genai_config(
        config,
        settings,
        getattr(source, "generation_config", None) or {},
        uses_position_ids=decoder.uses_position_ids,
        context_length=decoder.context_length,
    )
    (output_dir / C.GENAI_CONFIG_FILE).write_text(json.dumps(genai, indent=4), encoding="utf-8")
    chat_template = getattr(source, "chat_template", None)
    tokenizer = copy_tokenizer_files(
        source.tokenizer_files, output_dir, decoder.context_length, chat_template if isinstance(chat_template, str) else None
    )
    files = [C.MODEL_FILE, C.DATA_FILE, C.GENAI_CONFIG_FILE, *tokenizer]
    details = {
        "target": settings.target,
        "activations": settings.io_dtype,
        "attention": decoder.plan.mode,
        "attention_reason": decoder.plan.reason,
        "block_size": settings.block_size if settings.quantized else None,
        "symmetric": settings.symmetric if settings.quantized else None,
        "accuracy_level": settings.accuracy_level if settings.quantized else None,
        "context_length": decoder.context_length,
        **decoder.choices,
    }
    notes = list(settings.notes)
    if config.rope.is_longrope:
        notes.append(
            "LongRoPE: the long factors are used when the whole sequence (prompt + generated) is longer "
            f"than {config.rope.original_max_position} tokens. A generation that crosses that length keeps "
            "the keys it cached with the short factors (as onnxruntime-genai's own builder does); a "
            "full-sequence run matches transformers."
        )
    return ExportResult(
        files=files,
        scheme=settings.scheme,
        details=details,
        run_instructions=run_instructions(settings),
        notes=notes,
    )


def run_instructions(settings: OnnxSettings) -> str:
    return (
        "Run with onnxruntime-genai (`pip install onnxruntime-genai`):\n\n"
        "```python\n"
        "import onnxruntime_genai as og\n"
        "model = og.Model(\"<this folder>\")\n"
        "tokenizer = og.Tokenizer(model)\n"
        "params = og.GeneratorParams(model)\n"
        "params.set_search_options(max_length=256, do_sample=False)\n"
        "generator = og.Generator(model, params)\n"
        "generator.append_tokens(tokenizer.encode(\"Hello\"))\n"
        "while not generator.is_done():\n"
        "    generator.generate_next_token()\n"
        "print(tokenizer.decode(generator.get_sequence(0)))\n"
        "```\n\n"
        f"Or `phi-quant run <this folder> --prompt \"Hello\"`. Exported for the {settings.target} target."
    )
