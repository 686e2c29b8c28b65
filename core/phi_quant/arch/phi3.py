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

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import UnsupportedModelError
from .base import Architecture, Split, TensorSpec
from .config import PhiConfig, eos_ids, need, parse_rope, rope_parameters
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

    Every field is checked by type and range first (:data:`FIELDS`), so the arithmetic below only
    sees sane values; ``file`` is how refusals name the config.
    """
    check_config(raw, FIELDS, file)
    check_heads(raw, file)
    hidden = int(need(raw, "hidden_size"))
    heads = int(need(raw, "num_attention_heads"))
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    head_dim = int(raw.get("head_dim") or hidden // heads)
    if heads % kv_heads:
        raise UnsupportedModelError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    params = rope_parameters(raw)
    partial = float(raw.get("partial_rotary_factor", 1.0) or 1.0)
    partial = float(params.get("partial_rotary_factor", partial) or partial)
    rotary_dim = int(head_dim * partial)
    theta = float(raw.get("rope_theta") or params.get("rope_theta") or 10000.0)
    max_pos = int(need(raw, "max_position_embeddings"))
    rope = parse_rope(raw, rotary_dim, theta, max_pos, file)
    vocab = int(need(raw, "vocab_size"))
    raw = dict(raw)
    if tokenizer_size is not None:
        raw["_tokenizer_size"] = tokenizer_size
    return PhiConfig(
        architecture="Phi3ForCausalLM",
        hidden_size=hidden,
        num_layers=int(need(raw, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=int(need(raw, "intermediate_size")),
        vocab_size=vocab,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        max_position_embeddings=max_pos,
        rope=rope,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        sliding_window=raw.get("sliding_window"),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=eos_ids(raw),
        pad_token_id=raw.get("pad_token_id"),
        torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
        family=_guess_family(hidden, vocab, rope.is_longrope),
        raw=raw,
        arch_name="phi3",
    )


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

    def _attention(self, layer: int, h: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        c = self.config
        T, hd = h.shape[0], c.head_dim
        qkv = h @ self._weight(TensorRole.QKV, layer).T
        q = qkv[:, : c.q_size].reshape(T, c.num_heads, hd).transpose(1, 0, 2)
        k = qkv[:, c.q_size : c.q_size + c.kv_size].reshape(T, c.num_kv_heads, hd).transpose(1, 0, 2)
        v = qkv[:, c.q_size + c.kv_size :].reshape(T, c.num_kv_heads, hd).transpose(1, 0, 2)
        out = causal_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, c.sliding_window)
        return out @ self._weight(TensorRole.O, layer).T

    def _mlp(self, layer: int, h: np.ndarray) -> np.ndarray:
        gu = h @ self._weight(TensorRole.GATE_UP, layer).T
        gate, up = gu[:, : self.config.intermediate_size], gu[:, self.config.intermediate_size :]
        act = up * silu(gate)
        return act.astype(np.float32) @ self._weight(TensorRole.DOWN, layer).T

    def hidden_states(self, ids: Sequence[int]) -> np.ndarray:
        c = self.config
        ids = self._ids(ids)
        x = self._weight(TensorRole.EMBED)[ids]
        cos, sin = rope_tables(c, len(ids))
        for n in range(c.num_layers):
            h = rms_norm(x, self._weight(TensorRole.ATTN_NORM, n), c.rms_norm_eps)
            x = x + self._attention(n, h, cos, sin)
            h = rms_norm(x, self._weight(TensorRole.FFN_NORM, n), c.rms_norm_eps)
            x = x + self._mlp(n, h)
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


ARCHITECTURE = Phi3()
