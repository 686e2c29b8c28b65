"""A Llama-architecture GGUF re-laid as a Phi3ForCausalLM checkpoint (config, weights, tokenizer).

Phi3ForCausalLM computes exactly what LlamaForCausalLM computes (RMSNorm, SwiGLU, rotate-half
RoPE, grouped KV heads) once q/k/v are fused into ``qkv_proj`` ([q; k; v] rows) and gate/up into
``gate_up_proj`` ([gate; up] rows). Two things stand between a GGUF and that layout:

- llama.cpp's Llama converter (``convert_hf_to_gguf.py``, ``LlamaModel.permute``) reorders the
  rows of Q and K within each head so that rotary pairs are adjacent (its "normal" RoPE); we undo
  it: per head, rows ``[p0a, p0b, p1a, p1b, ...]`` go back to ``[p0a, p1a, ..., p0b, p1b, ...]``.
- quantized blocks sit on a 4-bit (or 8-bit) grid. With ``noise_seed`` every block gets seeded
  uniform noise of one grid cell (±d/2 of the block's own scale d), so the weights are continuous
  again and a later 4-bit re-quantization cannot be trivially lossless (see docs/real-model.md).

Everything streams: one GGUF tensor (or one q/k/v or gate/up group) is dequantized, changed and
written before the next is read. numpy and gguf-py only; no torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import UnsupportedModelError
from ..model.safetensors_io import SafetensorsWriter
from ..model.tensors import TensorRole, hf_name
from ..quant.reference import f32_to_bf16_bits
from .gguf_file import GGUFFile
from .gguf_tokenizer import tokenizer_files

__all__ = ["ARCH", "phi3_config", "generation_config", "tensor_plan", "write_checkpoint", "unpermute_rows",
           "grid_noise"]

ARCH = "llama"
_TORCH_DTYPE = {"bf16": "bfloat16", "f32": "float32"}


def _f32(x: float) -> float:
    """The shortest decimal that is the same float32 (GGUF stores 1e-5 as 9.9999997e-06)."""
    return float(str(np.float32(x)))


def _hparams(f: GGUFFile) -> dict[str, Any]:
    k = f.gguf.Keys
    arch = f.fields.get(k.General.ARCHITECTURE)
    if arch != ARCH:
        raise UnsupportedModelError(f"{f.path.name} holds a {arch!r} model; only Llama-architecture GGUFs can be re-laid")

    def get(key: str, default: Any = None) -> Any:
        v = f.fields.get(key.format(arch=ARCH), default)
        if v is None:
            raise UnsupportedModelError(f"{f.path.name} has no {key.format(arch=ARCH)}")
        return v

    hidden, heads = int(get(k.LLM.EMBEDDING_LENGTH)), int(get(k.Attention.HEAD_COUNT))
    head_dim = int(get(k.Attention.KEY_LENGTH, hidden // heads))
    rope_dim = int(get(k.Rope.DIMENSION_COUNT, head_dim))
    if rope_dim != head_dim:
        raise UnsupportedModelError(f"{f.path.name} rotates {rope_dim} of {head_dim} head dims; Llama rotates all")
    if f.fields.get(k.Rope.SCALING_TYPE.format(arch=ARCH), "none") not in ("none",):
        raise UnsupportedModelError(f"{f.path.name} uses RoPE scaling; phi-quant re-lays plain-RoPE Llama GGUFs only")
    tokens = f.fields[k.Tokenizer.LIST]
    return {
        "hidden": hidden, "heads": heads, "head_dim": head_dim,
        "kv_heads": int(get(k.Attention.HEAD_COUNT_KV, heads)),
        "layers": int(get(k.LLM.BLOCK_COUNT)),
        "intermediate": int(get(k.LLM.FEED_FORWARD_LENGTH)),
        "context": int(get(k.LLM.CONTEXT_LENGTH)),
        "eps": _f32(get(k.Attention.LAYERNORM_RMS_EPS)),
        "theta": _f32(get(k.Rope.FREQ_BASE, 10000.0)),
        "vocab": int(f.fields.get(k.LLM.VOCAB_SIZE.format(arch=ARCH), len(tokens))),
        "tied": f.gguf.TENSOR_NAMES[f.gguf.MODEL_TENSOR.OUTPUT] + ".weight" not in f.tensors,
        "bos": f.fields.get(k.Tokenizer.BOS_ID), "eos": f.fields.get(k.Tokenizer.EOS_ID),
        "pad": f.fields.get(k.Tokenizer.PAD_ID),
    }


def phi3_config(f: GGUFFile, dtype: str) -> dict[str, Any]:
    """config.json of the re-laid model: every hyper-parameter from the GGUF, no rope scaling."""
    h = _hparams(f)
    return {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "hidden_act": "silu",
        "hidden_size": h["hidden"],
        "intermediate_size": h["intermediate"],
        "num_hidden_layers": h["layers"],
        "num_attention_heads": h["heads"],
        "num_key_value_heads": h["kv_heads"],
        "head_dim": h["head_dim"],
        "max_position_embeddings": h["context"],
        "original_max_position_embeddings": h["context"],
        "rms_norm_eps": h["eps"],
        "rope_theta": h["theta"],
        "rope_scaling": None,
        "partial_rotary_factor": 1.0,
        "sliding_window": None,
        "tie_word_embeddings": h["tied"],
        "vocab_size": h["vocab"],
        "bos_token_id": h["bos"],
        "eos_token_id": h["eos"],
        "pad_token_id": h["pad"],
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": _TORCH_DTYPE[dtype],
    }


def generation_config(f: GGUFFile) -> dict[str, Any]:
    h = _hparams(f)
    return {"bos_token_id": h["bos"], "eos_token_id": h["eos"], "pad_token_id": h["pad"]}


# -- weights ---------------------------------------------------------------------------------------

def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Invert llama.cpp's Q/K permutation: rows of each head from pair-interleaved back to rotate-half."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def grid_noise(f: GGUFFile, name: str, seed: int) -> np.ndarray | None:
    """Uniform noise in [-d/2, d/2) per element, d the scale of its block; None for unquantized tensors.

    Q4_1 (``half d, half m, u8 qs[16]``) and Q8_0 (``half d, i8 qs[32]``) both begin each block with
    its fp16 scale d, the distance between two neighbouring grid values.
    """
    q = f.gguf.GGMLQuantizationType
    kind = q(f.tensors[name].ggml_type)
    if kind in (q.F32, q.F16, q.BF16):
        return None
    if kind not in (q.Q4_1, q.Q8_0, q.Q4_0, q.Q5_0, q.Q5_1):
        raise UnsupportedModelError(f"{name} is stored as {kind.name}; grid noise is defined for blocks that start "
                                    "with their fp16 scale (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)")
    block, type_size = f.gguf.GGML_QUANT_SIZES[kind]
    raw = np.ascontiguousarray(f.raw(name)).reshape(-1, type_size)
    d = np.abs(raw[:, :2].copy().view(np.float16).astype(np.float32))  # [n_blocks, 1]
    key = int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little")
    u = np.random.default_rng(key).random((raw.shape[0], block), dtype=np.float32)
    return ((u - np.float32(0.5)) * d).reshape(f.tensors[name].shape)


def _names(f: GGUFFile) -> Callable[[Any, int | None], str]:
    g = f.gguf

    def name(kind: Any, layer: int | None = None) -> str:
        return g.TENSOR_NAMES[kind].format(bid=layer) + ".weight"

    return name


def tensor_plan(f: GGUFFile) -> list[tuple[str, tuple[int, ...], list[str]]]:
    """``(HF name, shape, GGUF tensors it is made of)`` in the canonical Phi3 order."""
    h, t, name = _hparams(f), f.gguf.MODEL_TENSOR, _names(f)
    hid, qkv = h["hidden"], (h["heads"] + 2 * h["kv_heads"]) * h["head_dim"]
    plan = [(hf_name(TensorRole.EMBED), (h["vocab"], hid), [name(t.TOKEN_EMBD)])]
    for n in range(h["layers"]):
        plan += [
            (hf_name(TensorRole.ATTN_NORM, n), (hid,), [name(t.ATTN_NORM, n)]),
            (hf_name(TensorRole.QKV, n), (qkv, hid), [name(t.ATTN_Q, n), name(t.ATTN_K, n), name(t.ATTN_V, n)]),
            (hf_name(TensorRole.O, n), (hid, h["heads"] * h["head_dim"]), [name(t.ATTN_OUT, n)]),
            (hf_name(TensorRole.FFN_NORM, n), (hid,), [name(t.FFN_NORM, n)]),
            (hf_name(TensorRole.GATE_UP, n), (2 * h["intermediate"], hid), [name(t.FFN_GATE, n), name(t.FFN_UP, n)]),
            (hf_name(TensorRole.DOWN, n), (hid, h["intermediate"]), [name(t.FFN_DOWN, n)]),
        ]
    plan.append((hf_name(TensorRole.FINAL_NORM), (hid,), [name(t.OUTPUT_NORM)]))
    if not h["tied"]:
        plan.append((hf_name(TensorRole.LM_HEAD), (h["vocab"], hid), [name(t.OUTPUT)]))
    missing = [g for _, _, parts in plan for g in parts if g not in f.tensors]
    if missing:
        raise UnsupportedModelError(f"{f.path.name} lacks tensor {missing[0]} of a Llama model")
    return plan


def _weights(f: GGUFFile, noise_seed: int | None) -> Iterator[tuple[str, tuple[int, ...], np.ndarray]]:
    """Each HF tensor as float32, made from its GGUF tensors one group at a time."""
    h, t, name = _hparams(f), f.gguf.MODEL_TENSOR, _names(f)
    heads = {name(t.ATTN_Q, n): h["heads"] for n in range(h["layers"])}
    heads.update({name(t.ATTN_K, n): h["kv_heads"] for n in range(h["layers"])})
    for hf, shape, parts in tensor_plan(f):
        arrays = []
        for g in parts:
            w = f.dequantize(g)
            if noise_seed is not None:
                noise = grid_noise(f, g, noise_seed)
                if noise is not None:
                    w = w + noise
            if g in heads:
                w = unpermute_rows(w, heads[g])
            arrays.append(w)
        out = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        if out.shape != shape:
            raise UnsupportedModelError(f"{hf} comes out as {list(out.shape)}, the GGUF's hyper-parameters imply {list(shape)}")
        yield hf, shape, out


def write_checkpoint(f: GGUFFile, out: Path, *, dtype: str = "bf16", noise_seed: int | None = None,
                     extra_files: dict[str, Any] | None = None) -> Path:
    """Write the Phi3 checkpoint of ``f`` into the (existing) directory ``out``; see the module doc."""
    if dtype not in _TORCH_DTYPE:
        raise ValueError(f"dtype must be one of {', '.join(_TORCH_DTYPE)}")
    out = Path(out)

    def dump(fname: str, obj: Any) -> None:
        (out / fname).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    dump("config.json", phi3_config(f, dtype))
    dump("generation_config.json", generation_config(f))
    for fname, obj in tokenizer_files(f).items():
        dump(fname, obj)
    for fname, obj in (extra_files or {}).items():
        dump(fname, obj)
    decl = [(hf, dtype, shape) for hf, shape, _ in tensor_plan(f)]
    with SafetensorsWriter(out / "model.safetensors", decl, metadata={"format": "pt"}) as w:
        for hf, _, arr in _weights(f, noise_seed):
            w.write(hf, f32_to_bf16_bits(arr) if dtype == "bf16" else np.ascontiguousarray(arr, dtype=np.float32))
    return out
