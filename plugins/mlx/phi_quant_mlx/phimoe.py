"""PhiMoE (Phi-3.5-MoE) in mlx-lm's ``phimoe`` layout: module paths, config.json, refusals.

Facts from mlx-lm 0.32 ``mlx_lm/models/phimoe.py`` and ``switch_layers.py``: separate
``self_attn.{q,k,v,o}_proj``, every one an ``nn.Linear`` with a bias; ``nn.LayerNorm`` (scale
and shift, eps ``rms_norm_eps``) for ``input_layernorm``, ``post_attention_layernorm`` and
``model.norm``; the router ``block_sparse_moe.gate`` (a Linear without bias) and the experts
stacked in one ``SwitchGLU``, ``block_sparse_moe.switch_mlp.{gate_proj,up_proj,down_proj}``,
each weight ``[experts, out, in]`` (gate = the checkpoint's ``w1``, up = ``w3``, down =
``w2``); ``lm_head`` with a bias. Its routing is sparsemixer's eval-mode path (the same as
transformers'), and ``SuScaledRoPE`` takes ``short_mscale``/``long_mscale`` from
``rope_scaling``, applying ``long_factor`` and ``long_mscale`` at every length, as for phi3.

A quantized SwitchLinear is ``mx.quantize`` of the stacked weight, groups along the last axis:
every expert's rows quantized on their own, so each expert's slice is packed as it streams and
written at ``expert * slice bytes`` into the stacked tensor (:mod:`.layout`); no expert is held
while the next is read.

mlx-lm's phimoe builds every attention projection and the lm_head with a bias and loads
strictly; a PhiMoE without those biases (``attention_bias``/``lm_head_bias`` false) is written
with zero biases (:func:`with_required_biases`), which computes exactly the same.
"""

from __future__ import annotations

from typing import Any

from phi_quant.errors import UnsupportedModelError
import numpy as np

from phi_quant.model.config import PhiConfig
from phi_quant.model.tensors import SourceTensor, TensorInfo, TensorRole

from .config_json import LONGROPE_SHORT, decoder_keys, longrope_mode, quantization_block, source_keys
from .constants import TORCH_DTYPE
from .layout import PlannedTensor, QuantParams

__all__ = ["MODEL_TYPE", "check_supported", "build_config", "with_required_biases"]

from .constants import PHIMOE_MODEL_TYPE as MODEL_TYPE

def check_supported(cfg: PhiConfig) -> None:
    """Refuse what mlx-lm's phimoe cannot express: it derives head_dim, rotates every head
    dimension, and has no tied output layer. (Missing biases are written as zeros instead.)"""
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        raise UnsupportedModelError(
            f"mlx-lm's phimoe model computes head_dim as hidden_size/num_heads = {cfg.hidden_size // cfg.num_heads}, "
            f"but this checkpoint has head_dim {cfg.head_dim}; use another backend for it"
        )
    if cfg.partial_rotary_factor != 1.0:
        raise UnsupportedModelError(
            f"mlx-lm's phimoe model rotates every head dimension; this PhiMoE sets partial_rotary_factor "
            f"{cfg.partial_rotary_factor} (Phi-3.5-MoE rotates all): use another backend for it"
        )
    if cfg.tie_word_embeddings:
        raise UnsupportedModelError(
            "mlx-lm's phimoe model has no tied output layer (its lm_head is a Linear of its own, with a bias); "
            "this PhiMoE ties it to the embedding (Phi-3.5-MoE does not): use another backend for it"
        )
    for which in (False, True):
        if cfg.rope.is_longrope and not cfg.rope.mscale(which) > 0:
            raise UnsupportedModelError(
                f"this PhiMoE's LongRoPE {'long' if which else 'short'} mscale is {cfg.rope.mscale(which)}; "
                "mlx-lm's phimoe replaces a zero mscale by its own default: use another backend for it"
            )


def _rope(cfg: PhiConfig, mode: str | None) -> dict[str, Any]:
    """``rope_scaling`` (with the mscales mlx-lm's phimoe requires) and the context choice."""
    if mode is None:
        return {"rope_scaling": None}
    short, long = list(cfg.rope.short_factor or ()), list(cfg.rope.long_factor or ())
    short_m, long_m = cfg.rope.mscale(False), cfg.rope.mscale(True)
    out: dict[str, Any] = {
        "original_max_position_embeddings": int(cfg.rope.original_max_position),
        "rope_scaling": {
            "type": "longrope",
            "short_factor": short,
            "long_factor": short if mode == LONGROPE_SHORT else long,
            "short_mscale": short_m,
            "long_mscale": short_m if mode == LONGROPE_SHORT else long_m,
        },
    }
    return out


def build_config(
    cfg: PhiConfig,
    plan: list[PlannedTensor],
    *,
    float_dtype: str,
    default_quant: QuantParams | None,
    context_length: int | None,
) -> dict[str, Any]:
    """The complete config.json mlx-lm's phimoe reads (same contract as ``config_json.build_config``)."""
    check_supported(cfg)
    out = source_keys(cfg)
    out.update(
        {
            "architectures": ["PhiMoEForCausalLM"],
            "model_type": MODEL_TYPE,
            **decoder_keys(cfg),
            "max_position_embeddings": cfg.max_position_embeddings,
            "num_local_experts": cfg.num_experts,
            "num_experts_per_tok": cfg.experts_per_token,
            "router_jitter_noise": cfg.router_jitter,
            "attention_bias": True,
            "lm_head_bias": True,
            "tie_word_embeddings": False,
            "torch_dtype": TORCH_DTYPE[float_dtype],
        }
    )
    mode = longrope_mode(cfg, context_length)
    out.update(_rope(cfg, mode))
    if mode is not None:
        info: dict[str, Any] = {"longrope_factors": mode, "context_length": context_length}
        if mode == LONGROPE_SHORT:
            info["original_long_factor"] = list(cfg.rope.long_factor or ())
            info["original_long_mscale"] = cfg.rope.mscale(True)
            info["note"] = (
                "long_factor/long_mscale were replaced by short_factor/short_mscale because the export targets a "
                f"context of at most {cfg.rope.original_max_position} tokens; mlx-lm applies the long ones at every length"
            )
        out["phi_quant"] = info
    out.update(quantization_block(plan, default_quant))
    return dict(sorted(out.items()))


_ATTENTION = (TensorRole.Q, TensorRole.K, TensorRole.V, TensorRole.O)


def with_required_biases(source):
    """``source``, or a view of it whose stream has a zero bias after every q/k/v/o weight (and the
    lm_head) the checkpoint has none for: mlx-lm's phimoe needs them, and adding zero is exact."""
    cfg = source.config
    if not cfg.is_moe or (cfg.attention_bias and cfg.lm_head_bias):
        return source
    return _ZeroBiases(source)


class _ZeroBiases:
    """A source whose stream (``tensor_infos``/``tensors``) also yields the zero biases."""

    def __init__(self, source):
        self._source = source
        self.config = source.config

    def __getattr__(self, name: str):
        return getattr(self._source, name)

    def _zero_bias(self, info: TensorInfo) -> SourceTensor | None:
        c = self.config
        if not ((info.role in _ATTENTION and not c.attention_bias) or (info.role is TensorRole.LM_HEAD and not c.lm_head_bias)):
            return None
        rows = int(info.shape[0])
        stored = np.float32 if info.dtype == "f32" else np.uint16  # zero bits are +0.0 in every float dtype
        name = info.name[: -len("weight")] + "bias" if info.name.endswith(".weight") else info.name + ".bias"
        return SourceTensor(name, info.role.bias_role, info.layer, info.dtype, (rows,),
                            _loader=lambda: np.zeros(rows, dtype=stored))

    def tensor_infos(self, split: bool = False) -> list[TensorInfo]:
        out = []
        for info in self._source.tensor_infos(split):
            out.append(info)
            zero = self._zero_bias(info)
            if zero is not None:
                out.append(zero.info())
        return out

    def tensors(self, split: bool = False):
        for tensor in self._source.tensors(split):
            yield tensor
            zero = self._zero_bias(tensor)
            if zero is not None:
                yield zero

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.tensor_infos())
