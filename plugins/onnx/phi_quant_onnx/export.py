"""Export a streamed Phi checkpoint as an onnxruntime-genai model folder.

Plans every tensor's storage first (:mod:`.plan`), then reads each tensor once from the
memory-mapped checkpoint, writes it (converted, or quantized with the core's recipe) to
``model.onnx.data`` and emits its nodes; then saves the small ``model.onnx`` proto,
``genai_config.json`` and the tokenizer files, and reads the data file back to record a sha256
of every tensor's bytes in the manifest. Never imports torch or transformers.
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
from .plan import plan_for
from .settings import OnnxSettings
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
    plan = plan_for(source, options)
    settings = plan.settings
    with ExternalDataWriter(output_dir, C.DATA_FILE) as writer:
        decoder = _DECODERS[config.arch_name](config, settings, writer, plan, source)
        for tensor in source.tensors():
            decoder.consume(tensor)
            progress.advance(tensor.nbytes, tensor.name)
        model = decoder.finish()
    digests = _read_back(output_dir / C.DATA_FILE, decoder.written) | getattr(decoder, "digests", {})
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
    notes = list(settings.notes) + list(plan.tensor_plan.notes)
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
        quantization=plan.tensor_plan.summary(digests),
    )


def _read_back(data_file: Path, written: dict) -> dict[str, str]:
    """sha256 per source tensor of the initializer bytes in the finished data file."""
    from phi_quant.quant.digest import TensorDigest

    out = {}
    with open(data_file, "rb") as f:
        for name, arrays in written.items():
            d = TensorDigest()
            for key, proto in arrays.items():
                where = {e.key: e.value for e in proto.external_data}
                f.seek(int(where["offset"]))
                left = int(where["length"])
                while left:
                    block = f.read(min(left, 16 << 20))
                    d.update(key, block)
                    left -= len(block)
            out[name] = d.hexdigest()
    return out


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
