"""Checkpoint -> GGUF in one streaming pass (our kernel's schemes) or via llama.cpp's quantizer.

Header and tensor index are written first from ``source.tensor_infos()``; then each tensor is
read from the memory-mapped checkpoint, encoded in row chunks and appended, before the next one
is read. K-quant mixes go through a lossless temporary GGUF in ``output_dir`` that is always
removed, then ``llama_model_quantize``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from phi_quant.errors import UnsupportedModelError, UnsupportedPrecisionError
from phi_quant.pipeline import ahead
from phi_quant.types import ExportOptions, ExportResult, Progress

from .constants import KERNEL_TYPES, LLAMA_QUANTIZER_SCHEMES, PRECISION_SCHEMES, TensorName
from .encode import encode_tensor_chunks
from .gguf_file import GGUFStreamWriter, TensorSlot
from .kquant import llama_quantize_file
from .layout import PlannedTensor, parse_tensor_types, plan_tensors, rope_factor_slots
from .metadata import model_metadata, model_name
from .vocab import build_vocab

__all__ = ["resolve_scheme", "export_gguf", "gguf_filename", "LOSSLESS_TYPES"]

#: Lossless GGUF type for each stored dtype (the temporary input of llama.cpp's quantizer).
LOSSLESS_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def resolve_scheme(options: ExportOptions) -> str:
    """The native scheme for ``options`` (``--scheme`` or ``extra["scheme"]`` over the precision default)."""
    if options.precision not in PRECISION_SCHEMES:
        raise UnsupportedPrecisionError(
            f"llamacpp has no precision {options.precision!r}; choose one of {', '.join(PRECISION_SCHEMES)}"
        )
    default, others = PRECISION_SCHEMES[options.precision]
    scheme = (options.scheme or options.get("scheme") or default).upper()
    if scheme not in (default, *others):
        owner = [p for p, (d, o) in PRECISION_SCHEMES.items() if scheme in (d, *o)]
        hint = f"; {scheme} belongs to --precision {owner[0]}" if owner else ""
        raise UnsupportedPrecisionError(
            f"scheme {scheme} is not offered for {options.precision} (choose {', '.join((default, *others))}){hint}"
        )
    return scheme


def _stop_ids(source) -> tuple[int, ...]:
    """Ids generation stops at in transformers: generation_config's eos ids, else config's."""
    gen = (getattr(source, "generation_config", None) or {}).get("eos_token_id")
    if gen is None:
        return tuple(source.config.eos_token_ids)
    return tuple(gen) if isinstance(gen, list) else (int(gen),)


def _truthy(value: object) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def gguf_filename(source_path: Path, scheme: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source_path).name).strip("-.") or "model"
    return f"{stem}-{scheme}.gguf"


def _has_phi3_rstrip(tokenizer_files: dict[str, Path]) -> bool:
    """True when the HF tokenizer right-strips after its chat special tokens (Phi-3 style) and has
    the tokens llama.cpp's Phi-3 rule touches."""
    path = tokenizer_files.get("tokenizer.json")
    if not path:
        return False
    tj = json.loads(Path(path).read_text(encoding="utf-8"))
    contents = {a["content"]: a for a in tj.get("added_tokens", [])}
    vocab = tj.get("model", {}).get("vocab", {})
    have = lambda t: t in contents or (isinstance(vocab, dict) and t in vocab)  # noqa: E731
    if not all(have(t) for t in ("<unk>", "<s>", "</s>", "<|endoftext|>")):
        return False
    return any(a.get("rstrip") and a.get("special") for a in tj.get("added_tokens", []))


def _write_stream(source, path: Path, metadata: dict[str, Any], plan: list[PlannedTensor], rope: list[TensorSlot], progress: Progress) -> None:
    slots = rope + [p.slot for p in plan]
    by_name = {p.info.name: p for p in plan}
    with open(path, "wb") as fh:
        writer = GGUFStreamWriter(fh, metadata, slots)
        cfg = source.config
        if rope:
            writer.write(TensorName.ROPE_FACTORS_LONG, np.asarray(cfg.rope.long_factor, dtype=np.float32))
            writer.write(TensorName.ROPE_FACTORS_SHORT, np.asarray(cfg.rope.short_factor, dtype=np.float32))
        def encoded():  # (slot name, bytes) per chunk, then (None, tensor) when a tensor is done
            for tensor in source.tensors():
                planned = by_name[tensor.name]
                for chunk in encode_tensor_chunks(tensor, planned.slot.type):
                    yield planned.slot.name, chunk
                yield None, tensor

        for name, item in ahead(encoded()):  # encoding runs one step ahead of writing, in a worker thread
            if name is None:
                progress.advance(item.nbytes, item.name)
            else:
                writer.write(name, item)
        writer.finish()


def _read_types(path: Path) -> dict[str, str]:
    """Tensor name -> ggml type name of a finished GGUF (header only, memory-mapped)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in reader.tensors}


def export_gguf(source, output_dir: Path, options: ExportOptions, progress: Progress) -> ExportResult:
    """Write ``source`` as one GGUF file in ``output_dir``; see the module docstring."""
    scheme = resolve_scheme(options)
    overrides = parse_tensor_types(options.get("tensor_types"))
    cfg = source.config
    if cfg.num_heads * cfg.head_dim != cfg.hidden_size:
        raise UnsupportedModelError(
            f"llama.cpp's phi3 graph needs heads x head_dim == hidden size ({cfg.num_heads} x {cfg.head_dim} != "
            f"{cfg.hidden_size}); use another backend for this model"
        )
    vocab = build_vocab(
        source.tokenizer_files,
        source.tokenizer_config,
        cfg.vocab_size,
        config_bos=cfg.bos_token_id,
        config_eos=cfg.eos_token_ids,
        config_pad=cfg.pad_token_id,
        chat_template=source.chat_template,
        stop_ids=_stop_ids(source),
    )
    infos = source.tensor_infos()
    name = model_name(cfg, _has_phi3_rstrip(source.tokenizer_files))
    out_name = gguf_filename(source.path, scheme)
    out_path = Path(output_dir) / out_name
    rope = rope_factor_slots(cfg)
    notes = list(vocab.notes)

    if scheme in KERNEL_TYPES:
        plan = plan_tensors(infos, scheme, overrides, kernel_only=True)
        metadata = {**model_metadata(cfg, scheme, name), **vocab.metadata}
        _write_stream(source, out_path, metadata, plan, rope, progress)
        types = {p.slot.name: p.slot.type.name for p in plan}
        notes += [f"{p.slot.name}: {p.reason}" for p in plan if "fallback" in p.reason]
    else:
        assert scheme in LLAMA_QUANTIZER_SCHEMES
        stored = {i.dtype for i in infos if not i.role.is_norm}
        lossless = LOSSLESS_TYPES[stored.pop()] if len(stored) == 1 else "F32"  # mixed dtypes: widen
        plan = plan_tensors(infos, lossless, {}, kernel_only=True)
        plan_tensors(infos, "Q8_0", overrides, kernel_only=False)  # refuse overrides that match no tensor
        metadata = {**model_metadata(cfg, lossless, name), **vocab.metadata}
        tmp = Path(output_dir) / ".llamacpp-lossless"
        tmp.mkdir()
        try:
            lossless_path = tmp / f"lossless-{lossless}.gguf"
            _write_stream(source, lossless_path, metadata, plan, rope, progress)
            llama_quantize_file(lossless_path, out_path, scheme, overrides, options.threads, _truthy(options.get("verbose")))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        types = _read_types(out_path)
        notes.append(f"{scheme} made by llama.cpp's llama_model_quantize from a lossless {lossless} GGUF (removed)")

    counts = Counter(types.values())
    if cfg.sliding_window and cfg.sliding_window < cfg.max_position_embeddings:
        notes.append(
            f"sliding window {cfg.sliding_window}: llama.cpp runs Phi-3 models with full attention (its Phi SWA is "
            f"disabled), so prompts longer than {cfg.sliding_window} tokens differ from transformers"
        )
    if cfg.rope.is_longrope:
        notes.append(
            f"LongRoPE: llama.cpp uses the long factors for the whole run when loaded with a context above "
            f"{cfg.rope.original_max_position} tokens (-c/n_ctx), the short ones otherwise; transformers switches "
            f"per sequence length. Load with n_ctx <= {cfg.rope.original_max_position} unless you need long prompts."
        )
    details = {
        "file": out_name,
        "tensor_types": dict(sorted(counts.items())),
        "per_tensor": types,
        "overrides": overrides,
        "tokenizer": {"model": vocab.model, "pre": vocab.pre, "rows": vocab.size},
        "general.name": name,
        "rope": {
            "dimension_count": cfg.rope.rotary_dim,
            "longrope": cfg.rope.is_longrope,
            "original_context_length": cfg.rope.original_max_position,
            "attn_factor": cfg.rope.attention_factor if cfg.rope.is_longrope else None,
        },
    }
    n_ctx = min(cfg.rope.original_max_position or 4096, 4096) if cfg.rope.is_longrope else min(cfg.max_position_embeddings, 4096)
    run = (
        f"```sh\nllama-cli -m {out_name} -c {n_ctx} -cnv\n```\n\n"
        f"```python\nfrom llama_cpp import Llama\nllm = Llama(model_path=\"{out_name}\", n_ctx={n_ctx})\n"
        "print(llm.create_chat_completion(messages=[{\"role\": \"user\", \"content\": \"Hello\"}]))\n```\n"
    )
    return ExportResult(files=[out_name], scheme=scheme, details=details, run_instructions=run, notes=notes)
