"""PhiMoE (Phi-3.5-MoE) as a stateful OpenVINO graph: LayerNorm, biased projections, sparsemixer
routing and the experts, all in standard opset ops.

What differs from the Phi-3 decoder (:mod:`.decoder`), and how the graph computes it exactly:

* LayerNorm with a shift (``MVN`` over the hidden axis, variance inside the square root, then
  scale and shift) instead of RMSNorm, before attention, before the MLP and at the end;
* separate ``q``/``k``/``v``/``o`` projections with their biases, and an lm_head bias;
* the router (``block_sparse_moe.gate``) and sparsemixer's inference-time routing, built from
  ``TopK`` (stable, so ties pick the lower expert as ``argmax`` does), ``Select`` and ``Softmax``:
  the argmax, weighted by its softmax among the experts within ``2 * jitter`` of it, then the
  argmax of the rest, weighted likewise. The result is a dense routing weight per token and
  expert, zero for the experts not chosen;
* the experts computed densely-masked: every expert runs on every token with its own 2-D
  weight (compressed exactly like a dense layer's, NNCF's subgraph, one constant per expert as the
  checkpoint streams them) and its output is multiplied by its routing weight and summed.
  A zero weight contributes exactly zero, so the sum is the two chosen experts' weighted outputs.

Why densely masked rather than gathered: the graph keeps static, data-independent shapes and
plain ops (no ``NonZero``/``ScatterNDUpdate`` whose output sizes depend on the routing), which
every OpenVINO plugin executes, LLMPipeline's paged-attention conversion leaves alone, and NPU
compilation (static shapes) requires; each expert keeps the per-expert compressed-weight form
the CPU/GPU kernels decompress on the fly. The cost is compute: each token runs all experts
(8x the expert FLOPs of top-2 of 16). OpenVINO 2026.4 has an internal MoE op and fusions
(``ov::op::internal::MOE``/``MOECompressed``, ``FuseMOEExperts``,
``ConvertTiledMoeBlockTo3GatherMatmuls``) but no opset exposes them, so an IR cannot name them;
they are reached only by pattern matching of softmax-top-k routers as the PyTorch frontend
emits them. docs/backends/openvino.md says what that leaves.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
from openvino import opset13 as ops

from phi_quant.arch.phimoe import EXPERT_ROLES
from phi_quant.model.tensors import TensorInfo, TensorRole

from . import constants as C
from .decoder import _Builder, _i64
from .schemes import TensorScheme, WeightPlan

__all__ = ["PhiMoEBuilder", "sparsemixer", "float_kept", "keep_router_float", "ARCHITECTURE"]

#: The phi_quant.arch name this module writes.
ARCHITECTURE = "phimoe"


def float_kept(info: TensorInfo) -> bool:
    """Tensors no integer scheme touches in a PhiMoE export: the router. Its logits choose the
    experts, a discrete decision; keeping it float costs 0.005% of a Phi-3.5-MoE layer and is what
    llama.cpp (``ffn_gate_inp`` F32) does. docs/backends/openvino.md has what it measured."""
    return info.role is TensorRole.ROUTER


def keep_router_float(plan: WeightPlan, infos: list[TensorInfo]) -> WeightPlan:
    """Put every router in ``infos`` at the precision's float type (fp16 at fp16, else fp32), with a note."""
    routers = [i for i in infos if float_kept(i)]
    if not routers:
        return plan
    mode = C.FP16 if plan.options.primary.mode == C.FP16 else C.FP32
    for info in routers:
        plan.schemes[info.name] = TensorScheme(mode)
        if plan.options.primary.is_int:
            plan.reasons[info.name] = f"PhiMoE router kept at {mode}"
    if plan.options.primary.is_int:
        plan.notes.append(f"PhiMoE: the {len(routers)} routers (block_sparse_moe.gate) kept at {mode}: their logits "
                          "pick the experts (a discrete choice), and they are a negligible share of the weights")
    return plan


def _f32(value: float) -> ov.Node:
    return ops.constant(np.float32(value))


def sparsemixer(logits: ov.Output, num_experts: int, jitter: float, picks: int = 2, name: str | None = None) -> ov.Output:
    """PhiMoE's inference-time routing of ``logits`` [..., experts] as dense weights [..., experts].

    Step by step as :func:`phi_quant.arch.oracle.sparsemixer`: the best remaining expert (TopK,
    stable: the lowest index wins a tie, like argmax), its weight its softmax probability among
    the remaining experts whose logit is within ``2 * jitter`` of it relative to
    ``max(|logit|, best)``; then it is masked out and the next one is picked. Experts not picked
    get weight 0.
    """
    experts = ops.constant(np.arange(num_experts, dtype=np.int64))
    minus_inf, zero, one = _f32(-np.inf), _f32(0.0), _f32(1.0)
    window = _f32(np.float32(2 * jitter))
    magnitude = ops.abs(logits)
    masked, dense = logits, None
    for _ in range(picks):
        top = ops.topk(masked, ops.constant(np.int64(1)), axis=-1, mode="max", sort="value",
                       index_element_type="i64", stable=True)
        best, pick = top.output(0), top.output(1)  # [..., 1]
        # All-zero logits make 0 / 0, which torch and the oracle read as "not far" (NaN > window is
        # false). OpenVINO's AVX-512 CPU kernels answer true for NaN > x, so no NaN is made: a zero
        # denominator (only when best and the logit are both 0) becomes 1, giving 0 / 1 = 0.
        scale = ops.maximum(magnitude, best)
        scale = ops.select(ops.equal(scale, zero), one, scale)
        relative = ops.divide(ops.subtract(best, logits), scale)
        gates = ops.softmax(ops.select(ops.greater(relative, window), minus_inf, masked), -1)
        chosen = ops.equal(experts, pick)  # [..., E]: the expert picked at this step
        weight = ops.select(chosen, gates, zero)
        dense = weight if dense is None else ops.add(dense, weight)
        masked = ops.select(chosen, minus_inf, masked)
    if name:
        dense.set_friendly_name(name)
    return dense


class PhiMoEBuilder(_Builder):
    """The PhiMoE decoder: the Phi-3 graph's inputs, KV cache and attention, with PhiMoE's blocks."""

    def norm(self, x: ov.Output, role: TensorRole, layer: int | None) -> ov.Output:
        """LayerNorm as torch computes it: (x - mean) / sqrt(biased variance + eps) * weight + shift."""
        weight = self.vector(role, layer)
        shift = self.vector(role.bias_role, layer)
        normed = ops.mvn(x, _i64([-1]), normalize_variance=True, eps=float(self.cfg.rms_norm_eps),
                         eps_mode="inside_sqrt")
        return ops.add(ops.multiply(normed, weight), shift)

    def vector(self, role: TensorRole, layer: int | None) -> ov.Output:
        info = self.info(role, layer)
        return self.bank.float_vector(info.name, info.shape[0])

    def biased(self, x: ov.Output, role: TensorRole, layer: int | None, present: bool) -> ov.Output:
        y = self.linear(x, role, layer)
        return ops.add(y, self.vector(role.bias_role, layer)) if present else y

    def layer(self, x, layer, cos, sin, mask, beam_idx, batch):
        cfg = self.cfg
        h = self.norm(x, TensorRole.ATTN_NORM, layer)
        q, k, v = (self.biased(h, role, layer, cfg.attention_bias) for role in (TensorRole.Q, TensorRole.K, TensorRole.V))
        attn, sinks = self.attention(q, k, v, layer, cos, sin, mask, beam_idx, batch)
        x = ops.add(x, self.biased(attn, TensorRole.O, layer, cfg.attention_bias))

        h = self.norm(x, TensorRole.FFN_NORM, layer)
        x = ops.add(x, self.mlp(h, layer), name=f"model.layers.{layer}")
        return x, sinks

    def routing(self, h: ov.Output, layer: int) -> ov.Output:
        """Sparsemixer's dense routing weights [B, T, experts] for the normed hidden states ``h``."""
        cfg = self.cfg
        logits = self.linear(h, TensorRole.ROUTER, layer)  # [B, T, E]
        return sparsemixer(logits, cfg.num_experts, cfg.router_jitter, cfg.experts_per_token,
                           name=f"model.layers.{layer}.block_sparse_moe.routing")

    def expert(self, h: ov.Output, layer: int, e: int) -> ov.Output:
        gate, up, down = (self.matrix(role, layer, e) for role in EXPERT_ROLES)
        g = ops.matmul(h, gate, transpose_a=False, transpose_b=True)
        u = ops.matmul(h, up, transpose_a=False, transpose_b=True)
        return ops.matmul(ops.multiply(ops.swish(g), u), down, transpose_a=False, transpose_b=True)

    def mlp(self, h: ov.Output, layer: int) -> ov.Output:
        weights = self.routing(h, layer)
        step, axis = _i64([1]), _i64([2])
        out = None
        for e in range(self.cfg.num_experts):
            w = ops.slice(weights, _i64([e]), _i64([e + 1]), step, axis)  # [B, T, 1]
            y = ops.multiply(self.expert(h, layer, e), w)
            out = y if out is None else ops.add(out, y)
        return out

    def lm_head(self, x: ov.Output, embed: ov.Output) -> ov.Output:
        logits = super().lm_head(x, embed)
        return ops.add(logits, self.vector(TensorRole.LM_HEAD_BIAS, None)) if self.cfg.lm_head_bias else logits
