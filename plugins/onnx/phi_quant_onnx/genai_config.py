"""``genai_config.json``: what onnxruntime-genai needs to run the decoder we wrote.

Same keys as the file onnxruntime-genai's model builder writes for Phi-3 (model type ``phi3``;
``phimoe`` for Phi-3.5-MoE, the type the builder gives ``PhiMoEForCausalLM``;
decoder input/output names with ``%d`` layer patterns, head/hidden sizes, special token ids and
search defaults). ``past_present_share_buffer`` is true: GroupQueryAttention updates the KV
cache in place, so genai allocates it once at ``max_length``.
"""

from __future__ import annotations

from typing import Any

from phi_quant.model.config import PhiConfig

from . import constants as C
from .settings import OnnxSettings

__all__ = ["build_genai_config"]


def _eos_ids(config: PhiConfig, generation_config: dict[str, Any]) -> list[int]:
    eos = generation_config.get("eos_token_id", None)
    if eos is None:
        eos = list(config.eos_token_ids)
    if isinstance(eos, int):
        eos = [eos]
    return [int(x) for x in eos]


def build_genai_config(
    config: PhiConfig,
    settings: OnnxSettings,
    generation_config: dict[str, Any] | None,
    *,
    uses_position_ids: bool,
    context_length: int,
) -> dict[str, Any]:
    """The genai_config.json dict for this export."""
    gen = dict(generation_config or {})
    eos = _eos_ids(config, gen)
    bos = gen.get("bos_token_id", config.bos_token_id)
    pad = gen.get("pad_token_id", config.pad_token_id)
    if pad is None:
        pad = eos[0] if eos else 0
    inputs: dict[str, str] = {"input_ids": C.INPUT_IDS, "attention_mask": C.ATTENTION_MASK}
    if uses_position_ids:
        inputs["position_ids"] = C.POSITION_IDS
    inputs["past_key_names"] = C.PAST_KEY_PATTERN
    inputs["past_value_names"] = C.PAST_VALUE_PATTERN
    outputs = {
        "logits": C.LOGITS,
        "present_key_names": C.PRESENT_KEY_PATTERN,
        "present_value_names": C.PRESENT_VALUE_PATTERN,
    }
    session_options: dict[str, Any] = {"log_id": "onnxruntime-genai", "provider_options": []}
    if settings.target in C.GENAI_PROVIDER_KEYS:
        session_options["provider_options"].append({C.GENAI_PROVIDER_KEYS[settings.target]: {}})
    do_sample = bool(gen.get("do_sample", False))
    return {
        "model": {
            "bos_token_id": int(bos) if bos is not None else None,
            "context_length": int(context_length),
            "decoder": {
                "session_options": session_options,
                "filename": C.MODEL_FILE,
                "head_size": config.head_dim,
                "hidden_size": config.hidden_size,
                "inputs": inputs,
                "outputs": outputs,
                "num_attention_heads": config.num_heads,
                "num_hidden_layers": config.num_layers,
                "num_key_value_heads": config.num_kv_heads,
            },
            "eos_token_id": eos if len(eos) != 1 else eos[0],
            "pad_token_id": int(pad),
            "type": C.GENAI_MODEL_TYPES[config.arch_name],
            "vocab_size": config.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": do_sample,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": int(context_length),
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "repetition_penalty": 1.0,
            "temperature": float(gen.get("temperature", 1.0) or 1.0),
            "top_k": int(gen.get("top_k", 50) or 50),
            "top_p": float(gen.get("top_p", 1.0) or 1.0),
        },
    }
