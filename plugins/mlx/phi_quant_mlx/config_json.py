"""The ``config.json`` mlx-lm's phi3 model reads, and the LongRoPE context choice.

mlx-lm's ``SuScaledRoPE`` multiplies the inverse frequencies by ``long_factor`` at every
position (it never looks at ``short_factor``) and scales cos/sin by
sqrt(1 + ln(max/orig)/ln(orig)). transformers uses the short factors while the sequence fits the
original context and the long ones beyond it, with the same scale. So an mlx export computes
what transformers computes for sequences longer than the original context, and something else
for shorter ones. ``context_length`` (the context the user will deploy at) picks:

- ``None`` or ``> original``: factors as in the checkpoint (long factors at every length).
- ``<= original``: ``long_factor`` is replaced by ``short_factor`` in ``rope_scaling``, so mlx-lm
  computes exactly transformers' short-context result; the original long factors are kept under
  ``phi_quant.original_long_factor`` and prompts longer than the original context then degrade
  (mlx-lm has no switch at run time).
"""

from __future__ import annotations

import math
from typing import Any

from phi_quant.errors import UnsupportedModelError
from phi_quant.model.config import PhiConfig

from .constants import MODEL_TYPE, QUANT_KEY, QUANT_MIRROR_KEY, TORCH_DTYPE
from .layout import PlannedTensor, QuantParams

__all__ = ["LONGROPE_LONG", "LONGROPE_SHORT", "longrope_mode", "check_supported", "build_config", "decoder_keys", "source_keys",
           "quantization_block"]

LONGROPE_LONG = "long"
LONGROPE_SHORT = "short"

# Keys that describe the source's own serialisation and would mislead a reader of the output.
_DROP = ("rope_parameters", "rope_scaling", "quantization", "quantization_config", "_name_or_path",
         "auto_map", "_tokenizer_size", "dtype", "transformers_version")


def longrope_mode(cfg: PhiConfig, context_length: int | None) -> str | None:
    """``"short"``, ``"long"`` or None (no LongRoPE) for the deployment context asked for."""
    if not cfg.rope.is_longrope:
        return None
    if context_length is not None and context_length <= int(cfg.rope.original_max_position or 0):
        return LONGROPE_SHORT
    return LONGROPE_LONG


def _mlx_attention_scale(cfg: PhiConfig) -> float:
    orig = int(cfg.rope.original_max_position or cfg.max_position_embeddings)
    factor = cfg.max_position_embeddings / orig
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))


def check_supported(cfg: PhiConfig) -> None:
    """Refuse what mlx-lm's phi3 cannot express (it derives head_dim and the LongRoPE scale)."""
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        raise UnsupportedModelError(
            f"mlx-lm's phi3 model computes head_dim as hidden_size/num_heads = {cfg.hidden_size // cfg.num_heads}, "
            f"but this checkpoint has head_dim {cfg.head_dim}; use another backend for it"
        )
    if cfg.rope.is_longrope and abs(_mlx_attention_scale(cfg) - cfg.rope.attention_factor) > 1e-6:
        raise UnsupportedModelError(
            f"this checkpoint sets a LongRoPE attention factor {cfg.rope.attention_factor:.6f}; mlx-lm's phi3 always "
            f"uses sqrt(1 + ln(max/orig)/ln(orig)) = {_mlx_attention_scale(cfg):.6f}; use another backend for it"
        )


def decoder_keys(cfg: PhiConfig) -> dict[str, Any]:
    """The decoder's shape keys, in the order both mlx-lm configs (phi3, phimoe) write them."""
    return {
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "vocab_size": cfg.vocab_size,
        "rope_theta": cfg.rope.theta,
    }


def build_config(
    cfg: PhiConfig,
    plan: list[PlannedTensor],
    *,
    float_dtype: str,
    default_quant: QuantParams | None,
    context_length: int | None,
) -> dict[str, Any]:
    """The complete config.json: model arguments, quantization block with per-module entries."""
    check_supported(cfg)
    out = source_keys(cfg)
    out.update(
        {
            "architectures": ["Phi3ForCausalLM"],
            "model_type": MODEL_TYPE,
            **decoder_keys(cfg),
            "partial_rotary_factor": cfg.partial_rotary_factor,
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "torch_dtype": TORCH_DTYPE[float_dtype],
        }
    )
    mode = longrope_mode(cfg, context_length)
    if mode is not None:
        short = list(cfg.rope.short_factor or ())
        long = list(cfg.rope.long_factor or ())
        out["original_max_position_embeddings"] = int(cfg.rope.original_max_position)
        out["rope_scaling"] = {
            "type": "longrope",
            "short_factor": short,
            "long_factor": short if mode == LONGROPE_SHORT else long,
        }
        info: dict[str, Any] = {"longrope_factors": mode, "context_length": context_length}
        if mode == LONGROPE_SHORT:
            info["original_long_factor"] = long
            info["note"] = (
                "long_factor was replaced by short_factor because the export targets a context of at most "
                f"{cfg.rope.original_max_position} tokens; mlx-lm applies long_factor at every length"
            )
        out["phi_quant"] = info
    out.update(quantization_block(plan, default_quant))
    return dict(sorted(out.items()))


def source_keys(cfg: PhiConfig) -> dict[str, Any]:
    """The source config's keys that still describe the output (the rest are rewritten)."""
    return {k: v for k, v in cfg.raw.items() if k not in _DROP}


def quantization_block(plan: list[PlannedTensor], default_quant: QuantParams | None) -> dict[str, Any]:
    """``quantization`` (mirrored as ``quantization_config``): the defaults, plus every module that
    differs from them under its path (``False``: kept in float), as mlx-lm's loader reads it."""
    if default_quant is None:
        return {}
    quant: dict[str, Any] = default_quant.as_config()
    for p in plan:
        if not p.info.role.is_matmul:
            continue
        if p.quant is None:
            quant[p.module] = False
        elif p.quant != default_quant:
            quant[p.module] = p.quant.as_config()
    return {QUANT_KEY: quant, QUANT_MIRROR_KEY: quant}
