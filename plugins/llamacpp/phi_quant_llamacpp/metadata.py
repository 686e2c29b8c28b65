"""Model hyperparameters as ``phi3`` / ``phimoe`` GGUF keys, from the normalised :class:`PhiConfig`.

What llama.cpp's ``phi3`` loader reads (``src/models/phi3.cpp``, ``llama-model.cpp``): sizes,
RMS epsilon, rotary dimension count (partial rotary), rope base, the LongRoPE original context
and attention factor, and a sliding window that is 0 when the checkpoint has none (Phi-4).
``phimoe`` (``src/models/phimoe.cpp``, computed by the phi3 graph) reads the same keys under its
own prefix plus the expert counts; its norm epsilon is the LayerNorm's (llama.cpp reads it as
the RMS epsilon), and its LongRoPE attention factor is the config's short mscale (one value:
llama.cpp has no per-factor-set scale).
"""

from __future__ import annotations

from typing import Any

from phi_quant.model.config import PhiConfig

from .constants import ALIGNMENT, GGUF_ARCHES, QUANTIZATION_VERSION, SCHEME_FILE_TYPES, Key, ValueType, arch_key
from .gguf_file import Typed

__all__ = ["model_metadata", "model_name"]


def model_name(config: PhiConfig, tokenizer_json_has_phi3_rstrip: bool) -> str:
    """``general.name``. llama.cpp switches on Phi-3's right-strip of special tokens when the
    name contains "phi-3"/"phi3", so the name is chosen from the tokenizer, not the family label."""
    base = config.family.replace("phi-3", "Phi 3").replace("phi3", "Phi 3")
    return f"phi-3 ({base})" if tokenizer_json_has_phi3_rstrip else base


def model_metadata(config: PhiConfig, scheme: str, name: str) -> dict[str, Any]:
    """The general.* and <arch>.* keys for ``config`` written with ``scheme``."""
    u32 = lambda v: Typed(int(v), ValueType.UINT32)  # noqa: E731
    f32 = lambda v: Typed(float(v), ValueType.FLOAT32)  # noqa: E731
    rope = config.rope
    arch = GGUF_ARCHES[config.arch_name]
    model: dict[str, Any] = {
        Key.CONTEXT_LENGTH: u32(config.max_position_embeddings),
        Key.EMBEDDING_LENGTH: u32(config.hidden_size),
        Key.FEED_FORWARD_LENGTH: u32(config.intermediate_size),
        Key.BLOCK_COUNT: u32(config.num_layers),
        Key.HEAD_COUNT: u32(config.num_heads),
        Key.HEAD_COUNT_KV: u32(config.num_kv_heads),
        Key.KEY_LENGTH: u32(config.head_dim),
        Key.VALUE_LENGTH: u32(config.head_dim),
        Key.RMS_EPS: f32(config.rms_norm_eps),
        Key.ROPE_DIMENSION_COUNT: u32(rope.rotary_dim),
        Key.ROPE_FREQ_BASE: f32(rope.theta),
        Key.ROPE_ORIG_CONTEXT: u32(rope.original_max_position or config.max_position_embeddings),
        Key.SLIDING_WINDOW: u32(config.sliding_window or 0),
    }
    if rope.is_longrope:
        model[Key.ROPE_ATTN_FACTOR] = f32(rope.mscale(long=False))
    if config.is_moe:
        model[Key.EXPERT_COUNT] = u32(config.num_experts)
        model[Key.EXPERT_USED_COUNT] = u32(config.experts_per_token)
    return {
        Key.ARCHITECTURE: arch,
        Key.NAME: name,
        Key.FILE_TYPE: u32(SCHEME_FILE_TYPES[scheme]),
        Key.QUANTIZATION_VERSION: u32(QUANTIZATION_VERSION),
        Key.ALIGNMENT: u32(ALIGNMENT),
        **{arch_key(k, arch): v for k, v in model.items()},
    }
