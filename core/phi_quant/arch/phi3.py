"""Phi3ForCausalLM: Phi-3/3.5-mini, Phi-3-medium, Phi-4 and Phi-4-mini.

The layout (transformers ``models/phi3/modeling_phi3.py``): RMSNorm everywhere; a fused
``qkv_proj`` with rows [Q | K | V] and a fused ``gate_up_proj`` with rows [gate | up], the MLP
computing ``down(up * silu(gate))``; NEOX rotary on the first ``rotary_dim`` dims of each head,
LongRoPE factors chosen once per sequence (long when it is longer than the original context)
with cos/sin scaled by the attention factor; causal (and sliding-window) attention with grouped
KV heads; the lm_head reuses the embedding when tied.

Stream order (what ``ModelSource.tensors()`` yields and backends may rely on)::

    embed
    for each layer N: attn_norm, qkv, o, ffn_norm, gate_up, down
    final_norm
    lm_head            (absent when tie_word_embeddings)

``tensors(split=True)`` yields q, k, v in place of qkv and gate, up in place of gate_up.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import UnsupportedModelError
from .base import Architecture, Observe, ScaleFold, Split, TensorSpec
from .config import PhiConfig, decoder_fields
from .config_fields import MAX_CONTEXT, Field, check_config, check_heads
from .oracle import ReferenceModel, causal_attention, rms_norm, rope_tables, rotate, silu
from .roles import TensorRole

__all__ = ["ARCHITECTURE", "FIELDS", "Phi3", "Phi3Reference", "parse_config"]

_LAYER_NAMES = {
    TensorRole.ATTN_NORM: "input_layernorm.weight",
    TensorRole.QKV: "self_attn.qkv_proj.weight",
    TensorRole.Q: "self_attn.q_proj.weight",
    TensorRole.K: "self_attn.k_proj.weight",
    TensorRole.V: "self_attn.v_proj.weight",
    TensorRole.O: "self_attn.o_proj.weight",
    TensorRole.FFN_NORM: "post_attention_layernorm.weight",
    TensorRole.GATE_UP: "mlp.gate_up_proj.weight",
    TensorRole.GATE: "mlp.gate_proj.weight",
    TensorRole.UP: "mlp.up_proj.weight",
    TensorRole.DOWN: "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    TensorRole.EMBED: "model.embed_tokens.weight",
    TensorRole.FINAL_NORM: "model.norm.weight",
    TensorRole.LM_HEAD: "lm_head.weight",
}
#: One decoder layer's tensors, in stream order.
_LAYER_ORDER = (TensorRole.ATTN_NORM, TensorRole.QKV, TensorRole.O, TensorRole.FFN_NORM, TensorRole.GATE_UP,
                TensorRole.DOWN)


#: Every config.json field :func:`parse_config` reads, with its kind and range (checked first).
FIELDS: tuple[Field, ...] = (
    Field("model_type", "str"),
    Field("hidden_size", "int", True, 1, 1 << 17),
    Field("num_attention_heads", "int", True, 1, 4096),
    Field("num_key_value_heads", "int", False, 1, 4096),
    Field("head_dim", "int", False, 1, 4096),
    Field("num_hidden_layers", "int", True, 1, 4096),
    Field("intermediate_size", "int", True, 1, 1 << 20),
    Field("vocab_size", "int", True, 1, 1 << 24),
    Field("rms_norm_eps", "float", False, 0.0, 1.0, min_open=True),
    Field("max_position_embeddings", "int", True, 1, MAX_CONTEXT),
    Field("original_max_position_embeddings", "int", False, 2, MAX_CONTEXT),
    Field("rope_theta", "float", False, 0.0, 1e12, min_open=True),
    Field("partial_rotary_factor", "float", False, 0.0, 1.0, min_open=True),
    Field("rope_scaling", "object"),
    Field("rope_parameters", "object"),
    Field("tie_word_embeddings", "bool"),
    Field("sliding_window", "int", False, 1, 1 << 24),
    Field("bos_token_id", "token"),
    Field("pad_token_id", "token"),
    Field("eos_token_id", "tokens"),
    Field("torch_dtype", "str"),
    Field("dtype", "str"),
)


def _guess_family(hidden: int, vocab: int, longrope: bool) -> str:
    if vocab >= 200000:
        return "phi-4-mini"
    if vocab >= 100000:
        return "phi-4"
    if hidden >= 5000:
        return "phi-3-medium-128k" if longrope else "phi-3-medium-4k"
    if hidden == 3072:
        return "phi-3.5-mini / phi-3-mini-128k" if longrope else "phi-3-mini-4k"
    return "phi3-family (custom size)"


def parse_config(raw: dict[str, Any], *, tokenizer_size: int | None = None, file: str = "config.json") -> PhiConfig:
    """A Phi3ForCausalLM ``config.json`` as a :class:`PhiConfig`, refusing what cannot be converted.

    Every field is checked by type and range first (:data:`FIELDS`), so the arithmetic in
    :func:`~phi_quant.arch.config.decoder_fields` only sees sane values; ``file`` is how refusals
    name the config.
    """
    check_config(raw, FIELDS, file)
    check_heads(raw, file)
    fields = decoder_fields(raw, tokenizer_size=tokenizer_size, default_theta=10000.0, file=file)
    family = _guess_family(fields["hidden_size"], fields["vocab_size"], fields["rope"].is_longrope)
    return PhiConfig(architecture="Phi3ForCausalLM", family=family, arch_name="phi3", **fields)


def attention(c: PhiConfig, w_qkv: np.ndarray, w_o: np.ndarray, h: np.ndarray, cos: np.ndarray, sin: np.ndarray,
              observe: Observe | None = None) -> np.ndarray:
    """Self-attention of one sequence ``h`` [T, hidden] (the attention norm's output)."""
    T, hd = h.shape[0], c.head_dim
    qkv = h @ w_qkv.T
    q = qkv[:, : c.q_size].reshape(T, c.num_heads, hd).transpose(1, 0, 2)
    k = qkv[:, c.q_size : c.q_size + c.kv_size].reshape(T, c.num_kv_heads, hd).transpose(1, 0, 2)
    v = qkv[:, c.q_size + c.kv_size :].reshape(T, c.num_kv_heads, hd).transpose(1, 0, 2)
    out = causal_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, c.sliding_window)
    if observe is not None:
        observe(TensorRole.O, out)
    return out @ w_o.T


def mlp(c: PhiConfig, w_gate_up: np.ndarray, w_down: np.ndarray, h: np.ndarray, observe: Observe | None = None) -> np.ndarray:
    """``down(up * silu(gate))`` of ``h`` [T, hidden] (the MLP norm's output)."""
    gu = h @ w_gate_up.T
    gate, up = gu[:, : c.intermediate_size], gu[:, c.intermediate_size :]
    act = (up * silu(gate)).astype(np.float32)
    if observe is not None:
        observe(TensorRole.DOWN, act)
    return act @ w_down.T


def decoder_layer(c: PhiConfig, weight: Callable[[TensorRole], np.ndarray], x: np.ndarray, cos: np.ndarray,
                  sin: np.ndarray, observe: Observe | None = None) -> np.ndarray:
    """One decoder layer on the residual stream ``x`` [T, hidden]; ``weight(role)`` gives its float32 tensors.

    ``observe(role, activations)``, when given, sees the input of every matmul of the layer, named by
    the matmul's role (QKV, O, GATE_UP, DOWN): what calibration collects statistics of.
    """
    h = rms_norm(x, weight(TensorRole.ATTN_NORM), c.rms_norm_eps)
    if observe is not None:
        observe(TensorRole.QKV, h)
    x = x + attention(c, weight(TensorRole.QKV), weight(TensorRole.O), h, cos, sin, observe)
    h = rms_norm(x, weight(TensorRole.FFN_NORM), c.rms_norm_eps)
    if observe is not None:
        observe(TensorRole.GATE_UP, h)
    return x + mlp(c, weight(TensorRole.GATE_UP), weight(TensorRole.DOWN), h, observe)


class Phi3Reference(ReferenceModel):
    """fp32 Phi3ForCausalLM, step by step as transformers computes it (float32, eager attention).

    Split weights (``q_proj``/``k_proj``/``v_proj``, ``gate_proj``/``up_proj``) are fused on
    load; a missing ``lm_head.weight`` falls back to the embedding when embeddings are tied.
    """

    def _prepare(self) -> None:
        arch, c = ARCHITECTURE, self.config
        for n in range(c.num_layers):
            for fused, parts in arch.splits(c).items():
                name = arch.hf_name(fused, n)
                if name not in self.w:
                    self.w[name] = np.concatenate([self.w.pop(arch.hf_name(p.role, n)) for p in parts], axis=0)
        head = arch.hf_name(TensorRole.LM_HEAD)
        if head not in self.w:
            if not c.tie_word_embeddings:
                raise KeyError(f"{head} is missing and tie_word_embeddings is false")
            self.w[head] = self.w[arch.hf_name(TensorRole.EMBED)]

    def _weight(self, role: TensorRole, layer: int | None = None) -> np.ndarray:
        return self.w[ARCHITECTURE.hf_name(role, layer)]

    def hidden_states(self, ids: Sequence[int]) -> np.ndarray:
        c = self.config
        ids = self._ids(ids)
        x = self._weight(TensorRole.EMBED)[ids]
        cos, sin = rope_tables(c, len(ids))
        for n in range(c.num_layers):
            x = decoder_layer(c, lambda role, n=n: self._weight(role, n), x, cos, sin)
        return rms_norm(x, self._weight(TensorRole.FINAL_NORM), c.rms_norm_eps)

    def lm_head(self, hidden: np.ndarray) -> np.ndarray:
        return hidden @ self._weight(TensorRole.LM_HEAD).T


class Phi3(Architecture):
    """The Phi3ForCausalLM layout (see the module docstring for the stream order)."""

    name = "phi3"
    hf_architectures = ("Phi3ForCausalLM",)
    model_types = ("phi3",)
    models = "Phi-3/3.5-mini, Phi-3-medium, Phi-4, Phi-4-mini"
    reference_class = Phi3Reference

    def parse_config(self, raw: dict[str, Any], *, tokenizer_size: int | None = None,
                     file: str = "config.json") -> PhiConfig:
        return parse_config(raw, tokenizer_size=tokenizer_size, file=file)

    def hf_name(self, role: TensorRole, layer: int | None = None, expert: int | None = None) -> str:
        if expert is not None:
            raise ValueError(f"{self.name} has no experts (role {role.value}, expert {expert})")
        if role in _GLOBAL_NAMES:
            return _GLOBAL_NAMES[role]
        if layer is None:
            raise ValueError(f"role {role.value} needs a layer index")
        return f"model.layers.{layer}.{_LAYER_NAMES[role]}"

    def _shape(self, c: PhiConfig, role: TensorRole) -> tuple[int, ...]:
        h, i = c.hidden_size, c.intermediate_size
        return {
            TensorRole.EMBED: (c.vocab_size, h),
            TensorRole.ATTN_NORM: (h,),
            TensorRole.QKV: (c.qkv_rows, h),
            TensorRole.O: (h, c.q_size),
            TensorRole.FFN_NORM: (h,),
            TensorRole.GATE_UP: (2 * i, h),
            TensorRole.DOWN: (h, i),
            TensorRole.FINAL_NORM: (h,),
            TensorRole.LM_HEAD: (c.vocab_size, h),
        }[role]

    def stream_plan(self, config: PhiConfig) -> list[TensorSpec]:
        roles: list[tuple[TensorRole, int | None]] = [(TensorRole.EMBED, None)]
        for n in range(config.num_layers):
            roles += [(r, n) for r in _LAYER_ORDER]
        roles.append((TensorRole.FINAL_NORM, None))
        if not config.tie_word_embeddings:
            roles.append((TensorRole.LM_HEAD, None))
        return [TensorSpec(r, n, self.hf_name(r, n), self._shape(config, r)) for r, n in roles]

    def splits(self, config: PhiConfig) -> Mapping[TensorRole, tuple[Split, ...]]:
        q, kv, i = config.q_size, config.kv_size, config.intermediate_size
        return {
            TensorRole.QKV: (Split(TensorRole.Q, 0, q), Split(TensorRole.K, q, q + kv),
                             Split(TensorRole.V, q + kv, q + 2 * kv)),
            TensorRole.GATE_UP: (Split(TensorRole.GATE, 0, i), Split(TensorRole.UP, i, 2 * i)),
        }

    def check_layout(self, names: Iterable[str]) -> None:
        names = list(names)
        if any(".q_proj." in n or ".gate_proj." in n for n in names) and not any(".qkv_proj." in n for n in names):
            raise UnsupportedModelError(
                "this checkpoint stores separate q/k/v (or gate/up) projections: it is not in the Phi3ForCausalLM "
                "layout (fused qkv_proj and gate_up_proj)"
            )

    def calibration_layer(self, config: PhiConfig, layer: int, weight: Callable[..., np.ndarray], x: np.ndarray,
                          cos: np.ndarray, sin: np.ndarray, observe: Observe) -> np.ndarray:
        return decoder_layer(config, weight, x, cos, sin, observe)

    def scale_folds(self, config: PhiConfig, layer: int) -> list[ScaleFold]:
        """attention norm -> qkv columns; v rows -> o columns (one scale per kv head channel, shared by
        the query heads of its group); MLP norm -> gate_up columns; up rows -> down columns."""
        c = config
        q, kv, i, hd = c.q_size, c.kv_size, c.intermediate_size, c.head_dim
        group = c.num_heads // c.num_kv_heads
        cols = np.arange(q)
        v_index = ((cols // hd) // group) * hd + cols % hd
        return [
            ScaleFold("attn_in", layer, TensorRole.ATTN_NORM, None, ((TensorRole.QKV, None),), c.hidden_size),
            ScaleFold("v_o", layer, TensorRole.QKV, (q + kv, q + 2 * kv), ((TensorRole.O, None),), kv,
                      None if group == 1 else v_index),
            ScaleFold("mlp_in", layer, TensorRole.FFN_NORM, None, ((TensorRole.GATE_UP, None),), c.hidden_size),
            ScaleFold("up_down", layer, TensorRole.GATE_UP, (i, 2 * i), ((TensorRole.DOWN, None),), i),
        ]


ARCHITECTURE = Phi3()
