"""Checkpoint -> GGUF in one streaming pass (our writer) or via llama.cpp's quantizer.

The per-tensor plan (:mod:`.plan`) comes first. Header and tensor index are written from it;
then each tensor is read from the memory-mapped checkpoint, encoded in row chunks (the core's
recipe and kernel for our types, ggml's quantizer for the others) and appended, before the next
one is read. The named K-quant mixes go through a lossless temporary GGUF in ``output_dir`` that
is always removed, then ``llama_model_quantize``. The manifest records a sha256 of every tensor's
bytes: taken as they are written in the streaming pass, read back from the finished file (in
bounded chunks) when llama.cpp wrote it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from phi_quant.errors import UnsupportedModelError
from phi_quant.pipeline import ahead
from phi_quant.quant.digest import TensorDigest
from phi_quant.quant.plan import recipe_context
from phi_quant.quant.recipes import get_recipe
from phi_quant.types import ExportOptions, ExportResult, Progress

from . import phimoe
from .constants import GGMLType, TensorName
from .encode import encode_tensor_chunks
from .gguf_file import GGUFStreamWriter, TensorSlot
from .imatrix import IMATRIX_FILE, write_imatrix
from .kquant import llama_quantize_file
from .layout import PlannedTensor, rope_factor_slots, slots_by_source
from .metadata import model_metadata, model_name
from .phimoe import Rewrite
from .plan import LOSSLESS_TYPES, GGUFPlan, plan_for, resolve_scheme
from .vocab import build_vocab

__all__ = ["resolve_scheme", "export_gguf", "gguf_filename", "LOSSLESS_TYPES"]

_PHIMOE_NOTES = {
    "faithful": (
        "PhiMoE weights rewritten so llama.cpp's phimoe graph (RMSNorm, softmax-renormalised top-2 routing) "
        "computes the model's LayerNorm and sparsemixer routing: residual writers centred, experts' w2 x2, router "
        "x2^-12; tokens whose router logits nearly tie still differ (phimoe_weights=as-is writes the checkpoint's "
        "values, which llama.cpp runs as a different function)"
    ),
    "as-is": (
        "PhiMoE weights written as in the checkpoint (like convert_hf_to_gguf.py): llama.cpp's phimoe graph runs them "
        "with RMSNorm and softmax-renormalised routing, not the model's LayerNorm and sparsemixer, so its outputs "
        "differ from transformers'; the default phimoe_weights=faithful corrects that"
    ),
}


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


def phimoe_mode(source, options: ExportOptions) -> str | None:
    """``phimoe_weights`` for a PhiMoE checkpoint (checked), None for other architectures."""
    if source.config.arch_name != "phimoe":
        return None
    phimoe.check_supported(source.config)
    return phimoe.weights_mode(options)


def _rewrites(source, mode: str | None) -> dict[str, Rewrite]:
    """Source tensor name -> its PhiMoE weight rewrite (none for other architectures or ``as-is``)."""
    if mode is None:
        return {}
    return {i.name: r for i in source.tensor_infos() if (r := phimoe.rewrite_for(i, mode)) is not None}


def _widen(plan: list[PlannedTensor], rewrites: dict[str, Rewrite]) -> list[PlannedTensor]:
    """Rewritten tensors at F32 in the lossless file llama.cpp's quantizer reads (their values are
    no longer the checkpoint's, so its dtype would round them)."""
    return [dataclasses.replace(p, slot=dataclasses.replace(p.slot, type=GGMLType.F32), reason="rewritten: F32")
            if p.info.name in rewrites else p for p in plan]


def _write_stream(source, path: Path, metadata: dict[str, Any], plan: list[PlannedTensor], rope: list[TensorSlot],
                  progress: Progress, rewrites: dict[str, Rewrite], recipe: str | None = None,
                  hashed: bool = True) -> dict[str, str]:
    """Stream ``source`` into the GGUF at ``path``; with ``hashed``, return the sha256
    (:class:`TensorDigest`) of each source tensor's bytes, taken as they are written."""
    slots = rope + [p.slot for p in plan]
    by_name = slots_by_source(plan)  # a stacked expert tensor receives each expert's rows in turn
    r = get_recipe(recipe)
    with open(path, "wb") as fh:
        writer = GGUFStreamWriter(fh, metadata, slots)
        cfg = source.config
        if rope:
            writer.write(TensorName.ROPE_FACTORS_LONG, np.asarray(cfg.rope.long_factor, dtype=np.float32))
            writer.write(TensorName.ROPE_FACTORS_SHORT, np.asarray(cfg.rope.short_factor, dtype=np.float32))
        def encoded():  # (slot name, bytes) per chunk, then (None, tensor) when a tensor is done
            for tensor in source.tensors():
                planned = by_name[tensor.name]
                context = recipe_context(r, tensor.info(), source)
                for chunk in encode_tensor_chunks(tensor, planned.slot.type, r, context, rewrites.get(tensor.name)):
                    yield planned.slot.name, chunk
                yield None, tensor

        digests: dict[str, str] = {}
        digest = TensorDigest()
        for name, item in ahead(encoded()):  # encoding runs one step ahead of writing, in a worker thread
            if name is None:
                if hashed:
                    digests[item.name], digest = digest.hexdigest(), TensorDigest()
                progress.advance(item.nbytes, item.name)
            else:
                writer.write(name, item)
                if hashed:
                    digest.update("blocks", item)
        writer.finish()
    return digests


#: Bytes read at a time when hashing the finished file (bounded memory, whatever the model's size).
_READ_BACK_CHUNK = 16 << 20


def _read_back(path: Path, plan: GGUFPlan) -> tuple[dict[str, str], dict[str, str]]:
    """(GGUF name -> ggml type name, source tensor name -> sha256 of its bytes) of the finished file;
    an expert's bytes are its slice of the stacked tensor.

    The header comes from gguf-py's reader; the tensor bytes are read with ``pread`` in bounded
    chunks, not through the reader's memory map, so hashing a 2 GB output does not add 2 GB of
    mapped pages to the conversion's resident memory.
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    stored = {t.name: (t.tensor_type.name, int(t.data_offset), int(t.n_bytes)) for t in reader.tensors}
    del reader
    types = {name: kind for name, (kind, _, _) in stored.items()}
    digests = {}
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        for p in plan.entries:
            if p.slot.name not in stored:
                continue
            _, offset, size = stored[p.slot.name]
            per = size // len(p.infos)
            for i, info in enumerate(p.infos):
                d, start, end = TensorDigest(), offset + i * per, offset + (i + 1) * per
                while start < end:
                    chunk = os.pread(fd, min(_READ_BACK_CHUNK, end - start), start)
                    if not chunk:
                        raise OSError(f"{path.name} ends inside tensor {p.slot.name}")
                    d.update("blocks", chunk)
                    start += len(chunk)
                digests[info.name] = d.hexdigest()
    return types, digests


def export_gguf(source, output_dir: Path, options: ExportOptions, progress: Progress) -> ExportResult:
    """Write ``source`` as one GGUF file in ``output_dir``; see the module docstring."""
    cfg = source.config
    if cfg.num_heads * cfg.head_dim != cfg.hidden_size:
        raise UnsupportedModelError(
            f"llama.cpp's {cfg.arch_name} graph needs heads x head_dim == hidden size ({cfg.num_heads} x {cfg.head_dim} != "
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
    mode = phimoe_mode(source, options)
    rewrites = _rewrites(source, mode)
    name = model_name(cfg, _has_phi3_rstrip(source.tokenizer_files))
    plan = plan_for(source, options)
    scheme = plan.scheme
    label = _label(plan, options)
    out_name = gguf_filename(source.path, label)
    out_path = Path(output_dir) / out_name
    rope = rope_factor_slots(cfg)
    notes = list(vocab.notes) + list(plan.tensor_plan.notes)

    if plan.route == "stream":
        metadata = {**model_metadata(cfg, "Q4_K_M" if label == "q4_k_m" else scheme, name), **vocab.metadata}
        digests = _write_stream(source, out_path, metadata, plan.entries, rope, progress, rewrites, options.recipe)
        types = {slot.name: slot.type.name for slot in rope + [p.slot for p in plan.entries]}
        notes += [f"{p.slot.name}: {p.reason}" for p in plan.entries if "fallback" in p.reason]
    else:
        lossless = plan.lossless
        lossless_plan = _widen([dataclasses.replace(p, slot=dataclasses.replace(
            p.slot, type=GGMLType[lossless] if p.info.role.is_matmul and p.slot.type != GGMLType.F32 else GGMLType.F32))
            for p in plan.entries], rewrites)
        metadata = {**model_metadata(cfg, lossless, name), **vocab.metadata}
        tmp = Path(output_dir) / ".llamacpp-lossless"
        tmp.mkdir()
        try:
            lossless_path = tmp / f"lossless-{lossless}.gguf"
            _write_stream(source, lossless_path, metadata, lossless_plan, rope, progress, rewrites, hashed=False)
            llama_quantize_file(lossless_path, out_path, scheme, plan.overrides, options.threads, _truthy(options.get("verbose")),
                                _quantizer_importance(source, plan))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        notes.append(f"{scheme} made by llama.cpp's llama_model_quantize from a lossless {lossless} GGUF (removed)")
        types, digests = _read_back(out_path, plan)  # llama.cpp wrote these bytes: hash the file
    overrides = plan.overrides
    files = [out_name]
    view = getattr(source, "calibration", None)
    if view is not None:
        write_imatrix(Path(output_dir) / IMATRIX_FILE, view.stats, bool(cfg.tie_word_embeddings),
                      [f["path"] for f in (view.stats.meta.get("text") or {}).get("files", [])])
        files.append(IMATRIX_FILE)
        notes.append(f"{IMATRIX_FILE}: the calibration statistics as llama.cpp's importance matrix (of the original "
                     "weights), for llama-quantize --imatrix")

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
    if mode is not None:
        notes.append(_PHIMOE_NOTES[mode])
    details = {
        "file": out_name,
        "tensor_types": dict(sorted(counts.items())),
        "per_tensor": types,
        "overrides": overrides,
        "tokenizer": {"model": vocab.model, "pre": vocab.pre, "rows": vocab.size},
        "general.name": name,
        "phimoe_weights": mode,
        "rope": {
            "dimension_count": cfg.rope.rotary_dim,
            "longrope": cfg.rope.is_longrope,
            "original_context_length": cfg.rope.original_max_position,
            "attn_factor": cfg.rope.mscale(long=False) if cfg.rope.is_longrope else None,
        },
    }
    n_ctx = min(cfg.rope.original_max_position or 4096, 4096) if cfg.rope.is_longrope else min(cfg.max_position_embeddings, 4096)
    run = (
        f"```sh\nllama-cli -m {out_name} -c {n_ctx} -cnv\n```\n\n"
        f"```python\nfrom llama_cpp import Llama\nllm = Llama(model_path=\"{out_name}\", n_ctx={n_ctx})\n"
        "print(llm.create_chat_completion(messages=[{\"role\": \"user\", \"content\": \"Hello\"}]))\n```\n"
    )
    return ExportResult(files=files, scheme=label, details=details, run_instructions=run, notes=notes,
                        quantization=plan.tensor_plan.summary(digests))


def _quantizer_importance(source, plan: GGUFPlan) -> dict[str, np.ndarray] | None:
    """{GGUF name: calibrated mean x² of the scaled weight's input} for llama.cpp's quantizer, or None."""
    view = getattr(source, "calibration", None)
    if view is None:
        return None
    out = {}
    for p in plan.entries:
        st = view.for_tensor(p.info) if p.info.role.is_matmul else None
        if st is not None and st.count:
            out[p.slot.name] = st.mean_sq
    return out


def _label(plan: GGUFPlan, options: ExportOptions) -> str:
    """The scheme named in the file name and the manifest: the scheme, or the policy / budget that mixed it."""
    if plan.route == "stream" and options.bits_per_weight is not None:
        return f"{options.bits_per_weight:g}bpw"
    if plan.route == "stream" and (options.policy or "default") not in ("default", "uniform"):
        return options.policy
    return plan.scheme
