"""PhiMoE: Phi-3.5-MoE (``PhiMoEForCausalLM`` remote code, transformers' ``PhimoeForCausalLM``).

The layout (transformers ``models/phimoe/modeling_phimoe.py``, the hub's remote-code
``modeling_phimoe.py``): LayerNorm with a shift (not RMSNorm) before attention, before the MLP
and at the end, all with the config's ``rms_norm_eps``; separate ``q_proj``/``k_proj``/``v_proj``
and an ``o_proj``, all with biases when ``attention_bias`` (grouped KV heads, NEOX rotary);
an lm_head with a bias when ``lm_head_bias``. The MLP of every layer is a mixture of experts:
a router (``block_sparse_moe.gate``, no bias) gives one logit per expert, sparsemixer picks two
experts and their weights (:func:`phi_quant.arch.oracle.sparsemixer`: without near-ties both
weights are 1), and each expert computes ``w2(silu(w1 x) * w3 x)``. LongRoPE picks the short or
long factors per sequence like Phi-3, and scales cos/sin by ``short_mscale``/``long_mscale``
with them. Only the eval-mode computation is modelled: the router and input jitter noise are
training-time.

Stream order (what ``ModelSource.tensors()`` yields and backends may rely on)::

    embed
    for each layer N:
        attn_norm, attn_norm_bias,
        q, q_bias, k, k_bias, v, v_bias, o, o_bias     (biases only with attention_bias)
        ffn_norm, ffn_norm_bias,
        router,
        gate  expert 0, 1, ..., E-1                    (the experts' w1)
        up    expert 0, 1, ..., E-1                    (w3)
        down  expert 0, 1, ..., E-1                    (w2)
    final_norm, final_norm_bias
    lm_head            (absent when tie_word_embeddings)
    lm_head_bias       (only with lm_head_bias)

Each layer's experts come grouped by matrix and in expert order, so a writer of stacked expert
tensors (llama.cpp's ``ffn_gate_exps`` [E, inter, hidden], mlx-lm's SwitchGLU) appends each
expert's slice as it arrives and never holds more than one expert. Nothing is fused, so
``tensors(split=True)`` yields the same stream.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import UnsupportedModelError
from .base import Architecture, TensorSpec
from .config import PhiConfig, decoder_fields, need
from .config_fields import Field, check_config, check_heads
from .oracle import ReferenceModel, causal_attention, layer_norm, rope_tables, rotate, silu, sparsemixer
from .roles import TensorRole

__all__ = ["ARCHITECTURE", "FIELDS", "PhiMoE", "PhiMoEReference", "parse_config", "EXPERT_ROLES"]

#: The experts' matrices in stream order, with their names in the checkpoint.
EXPERT_ROLES = (TensorRole.GATE, TensorRole.UP, TensorRole.DOWN)
_EXPERT_NAMES = {TensorRole.GATE: "w1", TensorRole.UP: "w3", TensorRole.DOWN: "w2"}

_LAYER_NAMES = {
    TensorRole.ATTN_NORM: "input_layernorm.weight",
    TensorRole.ATTN_NORM_BIAS: "input_layernorm.bias",
    TensorRole.Q: "self_attn.q_proj.weight",
    TensorRole.Q_BIAS: "self_attn.q_proj.bias",
    TensorRole.K: "self_attn.k_proj.weight",
    TensorRole.K_BIAS: "self_attn.k_proj.bias",
    TensorRole.V: "self_attn.v_proj.weight",
    TensorRole.V_BIAS: "self_attn.v_proj.bias",
    TensorRole.O: "self_attn.o_proj.weight",
    TensorRole.O_BIAS: "self_attn.o_proj.bias",
    TensorRole.FFN_NORM: "post_attention_layernorm.weight",
    TensorRole.FFN_NORM_BIAS: "post_attention_layernorm.bias",
    TensorRole.ROUTER: "block_sparse_moe.gate.weight",
}
_GLOBAL_NAMES = {
    TensorRole.EMBED: "model.embed_tokens.weight",
    TensorRole.FINAL_NORM: "model.norm.weight",
    TensorRole.FINAL_NORM_BIAS: "model.norm.bias",
    TensorRole.LM_HEAD: "lm_head.weight",
    TensorRole.LM_HEAD_BIAS: "lm_head.bias",
}
_ATTENTION = (TensorRole.Q, TensorRole.K, TensorRole.V, TensorRole.O)

#: What transformers 5 keeps in memory (and may save) instead of the hub's per-expert tensors.
_STACKED_MARKERS = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj", ".mlp.router.weight")


#: Every config.json field :func:`parse_config` reads, with its kind and range (checked first):
#: the dense decoder's fields plus the experts', the biases and the norm.
def _fields() -> tuple[Field, ...]:
    from .phi3 import FIELDS as DENSE

    return DENSE + (
        Field("num_local_experts", "int", True, 1, 1024),
        Field("num_experts_per_tok", "int", False, 1, 1024),
        Field("hidden_act", "str"),
        Field("attention_bias", "bool"),
        Field("lm_head_bias", "bool"),
        Field("router_jitter_noise", "float", False, 0.0, 1.0),
    )


FIELDS: tuple[Field, ...] = _fields()


def _guess_family(hidden: int, experts: int) -> str:
    if hidden == 4096 and experts == 16:
        return "phi-3.5-moe"
    return "phimoe-family (custom size)"


def parse_config(raw: dict[str, Any], *, tokenizer_size: int | None = None, file: str = "config.json") -> PhiConfig:
    """A PhiMoE ``config.json`` (``rope_scaling`` or transformers 5 ``rope_parameters``) as a
    :class:`PhiConfig`, refusing what cannot be converted (every field checked first, :data:`FIELDS`)."""
    check_config(raw, FIELDS, file)
    check_heads(raw, file)
    experts = int(need(raw, "num_local_experts"))
    per_token = int(raw.get("num_experts_per_tok") or 2)
    if per_token != 2 or experts < 2:
        raise UnsupportedModelError(
            f"{file}: PhiMoE routes every token to exactly 2 experts (sparsemixer); this config has num_local_experts "
            f"{experts} and num_experts_per_tok {per_token}"
        )
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"{file}: PhiMoE experts use silu; this config asks for hidden_act {act!r}")
    # PhimoeConfig's default theta is 1e6 (Phi-3.5-MoE's config sets 10000)
    fields = decoder_fields(raw, tokenizer_size=tokenizer_size, default_theta=1e6, mscale=True, file=file)
    return PhiConfig(
        architecture=(raw.get("architectures") or ["PhimoeForCausalLM"])[0],
        family=_guess_family(fields["hidden_size"], experts),
        arch_name="phimoe",
        norm="layer",
        attention_bias=bool(raw.get("attention_bias", False)),
        lm_head_bias=bool(raw.get("lm_head_bias", False)),
        num_experts=experts,
        experts_per_token=per_token,
        router_jitter=float(raw.get("router_jitter_noise", 0.01)),
        **fields,
    )


class PhiMoEReference(ReferenceModel):
    """fp32 PhiMoE in eval mode, step by step as transformers computes it (float32, eager attention).

    Besides the logits it answers what a backend author debugging a mixture of experts needs:
    :meth:`router_logits` and :meth:`route` (the two experts and weights of every token).
    """

    def _prepare(self) -> None:
        head = ARCHITECTURE.hf_name(TensorRole.LM_HEAD)
        if head not in self.w:
            if not self.config.tie_word_embeddings:
                raise KeyError(f"{head} is missing and tie_word_embeddings is false")
            self.w[head] = self.w[ARCHITECTURE.hf_name(TensorRole.EMBED)]

    def _weight(self, role: TensorRole, layer: int | None = None, expert: int | None = None) -> np.ndarray:
        return self.w[ARCHITECTURE.hf_name(role, layer, expert)]

    def _bias(self, role: TensorRole, layer: int | None, present: bool) -> np.ndarray | np.float32:
        bias = role.bias_role
        return self._weight(bias, layer) if present and bias is not None else np.float32(0.0)

    def _norm(self, x: np.ndarray, role: TensorRole, layer: int | None = None) -> np.ndarray:
        return layer_norm(x, self._weight(role, layer), self._bias(role, layer, True), self.config.rms_norm_eps)

    def _linear(self, x: np.ndarray, role: TensorRole, layer: int) -> np.ndarray:
        return x @ self._weight(role, layer).T + self._bias(role, layer, self.config.attention_bias)

    def _attention(self, layer: int, h: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        c = self.config
        T, hd = h.shape[0], c.head_dim
        q = self._linear(h, TensorRole.Q, layer).reshape(T, c.num_heads, hd).transpose(1, 0, 2)
        k = self._linear(h, TensorRole.K, layer).reshape(T, c.num_kv_heads, hd).transpose(1, 0, 2)
        v = self._linear(h, TensorRole.V, layer).reshape(T, c.num_kv_heads, hd).transpose(1, 0, 2)
        out = causal_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, c.sliding_window)
        return self._linear(out, TensorRole.O, layer)

    def router_logits(self, layer: int, h: np.ndarray) -> np.ndarray:
        """The router's logits [T, experts] for the post-attention-norm hidden states ``h``."""
        return (h @ self._weight(TensorRole.ROUTER, layer).T).astype(np.float32)

    def route(self, layer: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(experts [T, 2], weights [T, 2]) sparsemixer gives each token of ``h``."""
        return sparsemixer(self.router_logits(layer, h), self.config.router_jitter)

    def expert(self, layer: int, index: int, h: np.ndarray) -> np.ndarray:
        """One expert's output ``w2(silu(w1 h) * w3 h)`` for the rows of ``h``."""
        gate = h @ self._weight(TensorRole.GATE, layer, index).T
        up = h @ self._weight(TensorRole.UP, layer, index).T
        return (silu(gate) * up).astype(np.float32) @ self._weight(TensorRole.DOWN, layer, index).T

    def _moe(self, layer: int, h: np.ndarray) -> np.ndarray:
        picks, weights = self.route(layer, h)
        out = np.zeros_like(h)
        for e in range(self.config.num_experts):
            tokens, slot = np.nonzero(picks == e)
            if tokens.size:
                out[tokens] += self.expert(layer, e, h[tokens]) * weights[tokens, slot][:, None]
        return out

    def hidden_states(self, ids: Sequence[int]) -> np.ndarray:
        c = self.config
        ids = self._ids(ids)
        x = self._weight(TensorRole.EMBED)[ids]
        cos, sin = rope_tables(c, len(ids))
        for n in range(c.num_layers):
            x = x + self._attention(n, self._norm(x, TensorRole.ATTN_NORM, n), cos, sin)
            x = x + self._moe(n, self._norm(x, TensorRole.FFN_NORM, n))
        return self._norm(x, TensorRole.FINAL_NORM)

    def lm_head(self, hidden: np.ndarray) -> np.ndarray:
        return hidden @ self._weight(TensorRole.LM_HEAD).T + self._bias(TensorRole.LM_HEAD, None, self.config.lm_head_bias)


class PhiMoE(Architecture):
    """The PhiMoE layout (see the module docstring for the stream order)."""

    name = "phimoe"
    hf_architectures = ("PhiMoEForCausalLM", "PhimoeForCausalLM")
    model_types = ("phimoe",)
    models = "Phi-3.5-MoE"
    reference_class = PhiMoEReference

    def parse_config(self, raw: dict[str, Any], *, tokenizer_size: int | None = None,
                     file: str = "config.json") -> PhiConfig:
        return parse_config(raw, tokenizer_size=tokenizer_size, file=file)

    def hf_name(self, role: TensorRole, layer: int | None = None, expert: int | None = None) -> str:
        if role in _GLOBAL_NAMES:
            return _GLOBAL_NAMES[role]
        if layer is None:
            raise ValueError(f"role {role.value} needs a layer index")
        if role in _EXPERT_NAMES:
            if expert is None:
                raise ValueError(f"role {role.value} of {self.name} needs an expert index")
            return f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{_EXPERT_NAMES[role]}.weight"
        if expert is not None:
            raise ValueError(f"role {role.value} of {self.name} has no expert index (expert {expert})")
        try:
            return f"model.layers.{layer}.{_LAYER_NAMES[role]}"
        except KeyError:
            raise ValueError(f"{self.name} has no tensor of role {role.value}") from None

    def _shape(self, c: PhiConfig, role: TensorRole) -> tuple[int, ...]:
        h, i = c.hidden_size, c.intermediate_size
        return {
            TensorRole.EMBED: (c.vocab_size, h),
            TensorRole.Q: (c.q_size, h),
            TensorRole.Q_BIAS: (c.q_size,),
            TensorRole.K: (c.kv_size, h),
            TensorRole.K_BIAS: (c.kv_size,),
            TensorRole.V: (c.kv_size, h),
            TensorRole.V_BIAS: (c.kv_size,),
            TensorRole.O: (h, c.q_size),
            TensorRole.O_BIAS: (h,),
            TensorRole.ROUTER: (c.num_experts, h),
            TensorRole.GATE: (i, h),
            TensorRole.UP: (i, h),
            TensorRole.DOWN: (h, i),
            TensorRole.LM_HEAD: (c.vocab_size, h),
            TensorRole.LM_HEAD_BIAS: (c.vocab_size,),
        }.get(role, (h,))  # the norms and their shifts

    def stream_plan(self, config: PhiConfig) -> list[TensorSpec]:
        c = config
        entries: list[tuple[TensorRole, int | None, int | None]] = [(TensorRole.EMBED, None, None)]
        for n in range(c.num_layers):
            entries += [(TensorRole.ATTN_NORM, n, None), (TensorRole.ATTN_NORM_BIAS, n, None)]
            for role in _ATTENTION:
                entries.append((role, n, None))
                if c.attention_bias:
                    entries.append((role.bias_role, n, None))
            entries += [(TensorRole.FFN_NORM, n, None), (TensorRole.FFN_NORM_BIAS, n, None), (TensorRole.ROUTER, n, None)]
            entries += [(role, n, e) for role in EXPERT_ROLES for e in range(c.num_experts)]
        entries += [(TensorRole.FINAL_NORM, None, None), (TensorRole.FINAL_NORM_BIAS, None, None)]
        if not c.tie_word_embeddings:
            entries.append((TensorRole.LM_HEAD, None, None))
        if c.lm_head_bias:
            entries.append((TensorRole.LM_HEAD_BIAS, None, None))
        return [TensorSpec(r, n, self.hf_name(r, n, e), self._shape(c, r), expert=e) for r, n, e in entries]

    def check_layout(self, names: Iterable[str]) -> None:
        stacked = next((n for n in names if any(m in n for m in _STACKED_MARKERS)), None)
        if stacked is not None:
            raise UnsupportedModelError(
                f"this checkpoint stores its experts stacked ({stacked}), the layout transformers 5 uses in memory; "
                "phi-quant reads the published layout with one tensor per expert "
                "(block_sparse_moe.experts.N.w1/w2/w3): use the original Phi-3.5-MoE checkpoint files"
            )
        if any(".qkv_proj." in n for n in names):
            raise UnsupportedModelError(
                "this checkpoint stores a fused qkv_proj: it is not in the PhiMoE layout (separate q/k/v projections)"
            )

    def active_parameter_count(self, config: PhiConfig) -> int:
        """Parameters one token passes through: everything but the experts it is not routed to."""
        return sum(t.numel for t in self.stream_plan(config) if t.expert is None or t.expert < config.experts_per_token)

    def quirks(self, config: PhiConfig) -> list[str]:
        c = config
        out = [
            f"mixture of experts: {c.num_experts} experts per layer, {c.experts_per_token} per token by sparsemixer "
            f"routing (jitter {c.router_jitter:g}); {c.active_parameter_count():,} of {c.parameter_count():,} "
            "parameters active per token",
            "LayerNorm with bias (not RMSNorm)",
        ]
        if c.attention_bias:
            out.append("q/k/v/o projections carry biases")
        if c.lm_head_bias:
            out.append("lm_head carries a bias")
        return out + super().quirks(config)


ARCHITECTURE = PhiMoE()
