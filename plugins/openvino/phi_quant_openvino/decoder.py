"""The Phi3ForCausalLM decoder as a stateful OpenVINO graph.

Inputs and outputs are the ones optimum-intel's stateful export produces, which
``openvino_genai.LLMPipeline`` and ``OVModelForCausalLM`` look for: ``input_ids``,
``attention_mask``, ``position_ids`` (i64 [batch, seq]), ``beam_idx`` (i32 [batch]) and ``logits``
(f32 [batch, seq, vocab]). The KV cache of each layer is a pair of variables read by ReadValue
(initialised to an empty [batch, kv_heads, 0, head_dim] tensor, which is how LLMPipeline finds the
sequence axis), reordered by ``beam_idx`` (Gather on axis 0), concatenated with the new keys or
values and written back by Assign: the pattern the CPU and GPU plugins fuse into their stateful
attention, and that GenAI can turn into paged attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov
from openvino import opset13 as ops

from phi_quant.model.config import PhiConfig
from phi_quant.model.tensors import TensorInfo, TensorRole

from . import constants as C
from .rope import apply_rotary, cos_sin
from .schemes import WeightPlan
from .weights import WeightBank

__all__ = ["DecoderGraph", "build_decoder"]

_MASKED = -65504.0  # the additive mask value; finite in f16 so GPU/f16 inference stays NaN-free


@dataclass
class DecoderGraph:
    model: ov.Model
    bank: WeightBank
    decompression_converts: set[str]


def _i64(values) -> ov.Node:
    return ops.constant(np.array(values, dtype=np.int64))


def _named(node, name: str):
    node.output(0).get_tensor().set_names({name})
    node.set_friendly_name(name)
    return node


class _Builder:
    def __init__(self, config: PhiConfig, infos: list[TensorInfo], plan: WeightPlan):
        self.cfg = config
        self.plan = plan
        self.bank = WeightBank()
        self.by_role: dict[tuple[TensorRole, int | None, int | None], TensorInfo] = {
            (i.role, i.layer, i.expert): i for i in infos
        }
        self.decompression: set[str] = set()

    def info(self, role: TensorRole, layer: int | None = None, expert: int | None = None) -> TensorInfo:
        try:
            return self.by_role[(role, layer, expert)]
        except KeyError:
            where = f"layer {layer}" + ("" if expert is None else f", expert {expert}")
            raise ValueError(f"checkpoint has no {role.value} tensor for {where}") from None

    def matrix(self, role: TensorRole, layer: int | None = None, expert: int | None = None) -> ov.Output:
        info = self.info(role, layer, expert)
        scheme = self.plan.scheme(info.name)
        if scheme.mode == C.FP16:
            self.decompression.add(f"{info.name}/convert")
        return self.bank.matrix(info.name, info.shape, scheme)

    def linear(self, x: ov.Output, role: TensorRole, layer: int | None) -> ov.Output:
        return ops.matmul(x, self.matrix(role, layer), transpose_a=False, transpose_b=True)

    def norm(self, x: ov.Output, role: TensorRole, layer: int | None) -> ov.Output:
        """The decoder's norm (Phi-3: RMSNorm); an architecture with another norm overrides it."""
        return self.rms_norm(x, role, layer)

    def rms_norm(self, x: ov.Output, role: TensorRole, layer: int | None) -> ov.Output:
        info = self.info(role, layer)
        weight = self.bank.float_vector(info.name, info.shape[0])
        variance = ops.reduce_mean(ops.power(x, ops.constant(np.float32(2.0))), _i64([-1]), keep_dims=True)
        eps = ops.constant(np.float32(self.cfg.rms_norm_eps))
        inv = ops.divide(ops.constant(np.float32(1.0)), ops.sqrt(ops.add(variance, eps)))
        return ops.multiply(ops.multiply(x, inv), weight)

    def build(self) -> DecoderGraph:
        cfg = self.cfg
        input_ids = _named(ops.parameter([-1, -1], ov.Type.i64), C.INPUT_IDS)
        attention_mask = _named(ops.parameter([-1, -1], ov.Type.i64), C.ATTENTION_MASK)
        position_ids = _named(ops.parameter([-1, -1], ov.Type.i64), C.POSITION_IDS)
        beam_idx = _named(ops.parameter([-1], ov.Type.i32), C.BEAM_IDX)

        embed = self.matrix(TensorRole.EMBED)
        x = ops.gather(embed, input_ids, ops.constant(np.int64(0)), name="model.embed_tokens")
        batch = ops.gather(ops.shape_of(input_ids), _i64([0]), _i64(0))
        cos, sin = cos_sin(cfg.rope, position_ids)
        mask = self.attention_mask(input_ids, attention_mask)

        sinks = []
        for layer in range(cfg.num_layers):
            x, layer_sinks = self.layer(x, layer, cos, sin, mask, beam_idx, batch)
            sinks.extend(layer_sinks)

        x = self.norm(x, TensorRole.FINAL_NORM, None)
        logits = self.lm_head(x, embed)
        result = ops.result(logits)
        result.output(0).get_tensor().set_names({C.LOGITS})
        logits.output(0).get_tensor().set_names({C.LOGITS})
        result.set_friendly_name(C.LOGITS)
        model = ov.Model([result], sinks, [input_ids, attention_mask, position_ids, beam_idx], cfg.arch_name)
        return DecoderGraph(model, self.bank, self.decompression)

    def lm_head(self, x: ov.Output, embed: ov.Output) -> ov.Output:
        head = embed if self.cfg.tie_word_embeddings else self.matrix(TensorRole.LM_HEAD)
        return ops.matmul(x, head, transpose_a=False, transpose_b=True)

    def attention_mask(self, input_ids: ov.Output, attention_mask: ov.Output) -> ov.Output:
        """Additive mask [B, 1, T, S]: causal (and sliding-window) over past + new tokens, and padding.

        LLMPipeline's paged-attention backend replaces this mask with its own causal one; the
        sliding window then no longer applies (it matters past 2047 tokens on Phi-3-mini-4k).
        """
        total = ops.gather(ops.shape_of(attention_mask), _i64(1), _i64(0))  # S = past + T
        new = ops.gather(ops.shape_of(input_ids), _i64(1), _i64(0))  # T
        past = ops.subtract(total, new)
        q_pos = ops.unsqueeze(ops.range(past, total, _i64(1), "i64"), _i64([1]))  # [T, 1]
        k_pos = ops.unsqueeze(ops.range(_i64(0), total, _i64(1), "i64"), _i64([0]))  # [1, S]
        causal = ops.less_equal(k_pos, q_pos)  # [T, S]
        window = self.cfg.sliding_window
        if window is not None and window < self.cfg.max_position_embeddings:
            # transformers' sliding-window mask: key j is visible from query i iff j > i - window
            recent = ops.greater(k_pos, ops.subtract(q_pos, _i64(int(window))))
            causal = ops.logical_and(causal, recent)
        keep = ops.unsqueeze(ops.not_equal(attention_mask, _i64(0)), _i64([1, 2]))  # [B, 1, 1, S]
        allowed = ops.logical_and(keep, causal)  # [B, 1, T, S]
        return ops.select(allowed, ops.constant(np.float32(0.0)), ops.constant(np.float32(_MASKED)), name="attention_mask_4d")

    def kv_state(self, new: ov.Output, layer: int, kind: str, beam_idx: ov.Output, batch: ov.Output):
        cfg = self.cfg
        var_id = C.kv_variable_id(layer, kind)
        shape = ops.concat([batch, _i64([cfg.num_kv_heads]), _i64([0]), _i64([cfg.head_dim])], axis=0)
        init = ops.broadcast(ops.constant(np.float32(0.0)), shape)
        read = ops.read_value(init, var_id, ov.Type.f32, ov.PartialShape([-1, cfg.num_kv_heads, -1, cfg.head_dim]))
        past = ops.gather(read, beam_idx, ops.constant(np.int64(0)))
        both = ops.concat([past, new], axis=2)
        assign = ops.assign(both, var_id)
        return both, assign

    def expand_kv(self, x: ov.Output, batch: ov.Output) -> ov.Output:
        cfg = self.cfg
        if not cfg.is_gqa:
            return x
        group = cfg.num_heads // cfg.num_kv_heads
        x = ops.unsqueeze(x, _i64([2]))  # [B, kv, 1, S, hd]
        shape = ops.concat([batch, _i64([cfg.num_kv_heads, group, 1, cfg.head_dim])], axis=0)
        x = ops.broadcast(x, shape, broadcast_spec="bidirectional")
        return ops.reshape(x, _i64([0, cfg.num_heads, -1, cfg.head_dim]), special_zero=True)

    def layer(self, x, layer, cos, sin, mask, beam_idx, batch):
        cfg = self.cfg
        h = self.norm(x, TensorRole.ATTN_NORM, layer)
        qkv = self.linear(h, TensorRole.QKV, layer)
        q, k, v = ops.variadic_split(qkv, _i64(-1), _i64([cfg.q_size, cfg.kv_size, cfg.kv_size])).outputs()
        attn, sinks = self.attention(q, k, v, layer, cos, sin, mask, beam_idx, batch)
        x = ops.add(x, self.linear(attn, TensorRole.O, layer))

        h = self.norm(x, TensorRole.FFN_NORM, layer)
        x = ops.add(x, self.mlp(h, layer), name=f"model.layers.{layer}")
        return x, sinks

    def mlp(self, h: ov.Output, layer: int) -> ov.Output:
        cfg = self.cfg
        gate_up = self.linear(h, TensorRole.GATE_UP, layer)
        gate, up = ops.variadic_split(gate_up, _i64(-1), _i64([cfg.intermediate_size, cfg.intermediate_size])).outputs()
        return self.linear(ops.multiply(up, ops.swish(gate)), TensorRole.DOWN, layer)

    def attention(self, q, k, v, layer, cos, sin, mask, beam_idx, batch):
        """Rotary, the KV-cache states and SDPA for projected q/k/v [B, T, heads*hd]: (out [B, T, q], sinks)."""
        cfg = self.cfg

        def heads(t, n):
            t = ops.reshape(t, _i64([0, 0, n, cfg.head_dim]), special_zero=True)
            return ops.transpose(t, _i64([0, 2, 1, 3]))

        q = apply_rotary(heads(q, cfg.num_heads), cos, sin, cfg.rope.rotary_dim, cfg.head_dim)
        k = apply_rotary(heads(k, cfg.num_kv_heads), cos, sin, cfg.rope.rotary_dim, cfg.head_dim)
        v = heads(v, cfg.num_kv_heads)
        k_all, k_assign = self.kv_state(k, layer, "key", beam_idx, batch)
        v_all, v_assign = self.kv_state(v, layer, "value", beam_idx, batch)
        scale = ops.constant(np.float32(1.0 / np.sqrt(cfg.head_dim)))
        attn = ops.scaled_dot_product_attention(
            q, self.expand_kv(k_all, batch), self.expand_kv(v_all, batch), mask, scale, causal=False
        )
        attn = ops.reshape(ops.transpose(attn, _i64([0, 2, 1, 3])), _i64([0, 0, cfg.q_size]), special_zero=True)
        return attn, [k_assign, v_assign]


def build_decoder(config: PhiConfig, infos: list[TensorInfo], plan: WeightPlan) -> DecoderGraph:
    """Build the stateful decoder of ``config``'s architecture with placeholder weights for every
    tensor in ``infos``."""
    if config.arch_name == "phimoe":
        from .phimoe import PhiMoEBuilder

        return PhiMoEBuilder(config, infos, plan).build()
    return _Builder(config, infos, plan).build()
