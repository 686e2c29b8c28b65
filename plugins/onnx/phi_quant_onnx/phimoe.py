"""The PhiMoE (Phi-3.5-MoE) decoder as an ONNX graph: the phi3 graph's inputs, outputs, KV cache,
rotary and attention, with PhiMoE's own pieces.

* LayerNorm with its shift: the standard ``LayerNormalization`` first, then
  ``com.microsoft.SkipLayerNormalization`` (residual add + LayerNorm, gamma and beta);
* separate q/k/v projections with their biases into GroupQueryAttention (which takes Q, K, V
  unpacked), the o projection and the lm_head with theirs;
* LongRoPE with PhiMoE's short/long mscale (``rope.py`` scales each cache by its own);
* the mixture of experts: the router MatMul (kept in float, ``OnnxSettings.router_storage``), the
  routing of :mod:`routing`, and one ``com.microsoft.MoE`` (float experts) or ``QMoE``
  (MatMulNBits-packed experts) node whose stacked experts :mod:`experts` writes as they stream.

The stream order (``phi_quant.arch.phimoe``) is a topological order here too: a norm's node is
emitted when its shift arrives, a projection's bias Add right after the projection, the MoE node
once the layer's last expert (the last w2) is written.
"""

from __future__ import annotations

from onnx import TensorProto

from phi_quant.errors import UnsupportedModelError
from phi_quant.model.config import PhiConfig
from phi_quant.model.tensors import SourceTensor, TensorRole

from . import constants as C
from .decoder import Phi3OnnxDecoder, _Stored
from .experts import StackedExperts
from .external_data import ExternalDataWriter
from .routing import Routing, sparsemixer_routing
from .settings import OnnxSettings

__all__ = ["PhiMoEOnnxDecoder"]

_PROJECTIONS = {TensorRole.Q: "q_proj", TensorRole.K: "k_proj", TensorRole.V: "v_proj", TensorRole.O: "o_proj"}


class PhiMoEOnnxDecoder(Phi3OnnxDecoder):
    """Builds the PhiMoE graph; feed it every tensor with :meth:`consume`, then call :meth:`finish`."""

    def __init__(self, config: PhiConfig, settings: OnnxSettings, writer: ExternalDataWriter, plan, source=None):
        super().__init__(config, settings, writer, plan, source)
        self.digests: dict[str, str] = {}  # expert tensors: fingerprints of the rows written into the stacks
        self._norm_weight_name = ""
        self._proj: dict[TensorRole, str] = {}
        self._experts: StackedExperts | None = None
        self._lm_stored: _Stored | None = None
        self.choices["norm"] = "LayerNorm (LayerNormalization, then SkipLayerNormalization with beta)"
        self.choices["router"] = settings.router_storage  # by default; the plan may say otherwise per tensor

    def _handlers(self) -> dict:
        return {
            TensorRole.EMBED: self._embedding,
            TensorRole.ATTN_NORM: self._norm_scale,
            TensorRole.ATTN_NORM_BIAS: self._attn_norm_shift,
            TensorRole.Q: self._projection,
            TensorRole.K: self._projection,
            TensorRole.V: self._projection,
            TensorRole.Q_BIAS: self._projection_bias,
            TensorRole.K_BIAS: self._projection_bias,
            TensorRole.V_BIAS: self._projection_bias,
            TensorRole.O: self._projection,
            TensorRole.O_BIAS: self._projection_bias,
            TensorRole.FFN_NORM: self._norm_scale,
            TensorRole.FFN_NORM_BIAS: self._ffn_norm_shift,
            TensorRole.ROUTER: self._router,
            TensorRole.GATE: self._expert,
            TensorRole.UP: self._expert,
            TensorRole.DOWN: self._expert,
            TensorRole.FINAL_NORM: self._norm_scale,
            TensorRole.FINAL_NORM_BIAS: self._final_norm_shift,
            TensorRole.LM_HEAD: self._lm_head_weight,
            TensorRole.LM_HEAD_BIAS: self._lm_head_bias,
        }

    # -- norms: the scale arrives first, the node is emitted with the shift ---------------------
    def _norm_scale(self, t: SourceTensor) -> None:
        self._norm_weight_name = self._norm_weight(t, f"{self._norm_prefix(t)}.weight")

    def _norm_prefix(self, t: SourceTensor) -> str:
        role = TensorRole(t.role).weight_role
        if role is TensorRole.FINAL_NORM:
            return "model.norm"
        which = "input_layernorm" if role is TensorRole.ATTN_NORM else "post_attention_layernorm"
        return f"{C.layer_prefix(t.layer)}.{which}"

    def _shift(self, t: SourceTensor) -> str:
        if not self._norm_weight_name:
            raise UnsupportedModelError(f"tensor {t.name} arrived before its norm's scale")
        return self._norm_weight(t, f"{self._norm_prefix(t)}.bias")

    def _attn_norm_shift(self, t: SourceTensor) -> None:
        self._skip_norm(self._norm_weight_name, f"/model/layers.{t.layer}/input_layernorm", bias=self._shift(t))

    def _ffn_norm_shift(self, t: SourceTensor) -> None:
        self._skip_norm(self._norm_weight_name, f"/model/layers.{t.layer}/post_attention_layernorm", bias=self._shift(t))

    def _final_norm_shift(self, t: SourceTensor) -> None:
        self._skip_norm(self._norm_weight_name, "/model/norm", last=True, bias=self._shift(t))
        if self.config.tie_word_embeddings:
            self._lm_stored = self._tied_lm_head
            if not self.config.lm_head_bias:
                self._emit_lm_head(self._lm_stored)

    # -- attention: separate projections and their biases ---------------------------------------
    def _projection(self, t: SourceTensor) -> None:
        role, i = TensorRole(t.role), t.layer
        name = _PROJECTIONS[role]
        prefix = f"{C.layer_prefix(i)}.self_attn.{name}"
        stored = self._store(t, self.tensor_plan.storage(t.name), prefix)
        if role is TensorRole.O:
            self._attn_out = self._gqa(i, self._proj[TensorRole.Q], self._proj[TensorRole.K], self._proj[TensorRole.V])
            self.state.pending = self._matmul(self._attn_out, stored, f"/model/layers.{i}/attn/o_proj")
            self._proj = {}
            return
        self._proj[role] = self._matmul(self.state.hidden, stored, f"/model/layers.{i}/attn/{name}")

    def _projection_bias(self, t: SourceTensor) -> None:
        role, i = TensorRole(t.role).weight_role, t.layer
        name = _PROJECTIONS[role]
        bias = self._norm_weight(t, f"{C.layer_prefix(i)}.self_attn.{name}.bias")
        base = f"/model/layers.{i}/attn/{name}/Add"
        if role is TensorRole.O:
            self.state.pending = self.g.node1("Add", [self.state.pending, bias], base)
        else:
            self._proj[role] = self.g.node1("Add", [self._proj[role], bias], base)

    # -- mixture of experts ----------------------------------------------------------------------
    def _router(self, t: SourceTensor) -> None:
        g, i, cfg = self.g, t.layer, self.config
        base = f"/model/layers.{i}/moe"
        stored = self._store(t, self.tensor_plan.storage(t.name), f"{C.layer_prefix(i)}.moe.gate")
        logits = self._matmul(self.state.hidden, stored, f"{base}/gate")
        flat = g.node1("Reshape", [logits, g.const([-1, cfg.num_experts])], f"{base}/gate/Reshape")
        if self.io_kind != "fp32":  # routing runs in float32 whatever the activations
            flat = g.node1("Cast", [flat], f"{base}/gate/Cast", to=TensorProto.FLOAT)
        route = sparsemixer_routing(g, flat, cfg.router_jitter, f"{base}/route", cfg.num_experts)
        if self.io_kind != "fp32":
            route = Routing(g.node1("Cast", [route.router_probs], f"{base}/route/probs/Cast", to=self.io_type),
                            g.node1("Cast", [route.output_scale], f"{base}/route/scale/Cast", to=self.io_type))
        self._routing = route
        from phi_quant.quant.plan import recipe_context

        first = self.tensor_plan.storage(cfg.arch.hf_name(TensorRole.GATE, i, 0))  # a layer's experts are alike
        op = C.OP_QMOE if first.quantized else C.OP_MOE
        self.choices["experts"] = f"{op} ({first.scheme.name} experts, gate/up interleaved into fc1, swiglu alpha 1 beta 0)"
        self._experts = StackedExperts(
            self.writer, f"{C.layer_prefix(i)}.moe", cfg, first, scale_kind=self.io_kind,
            threads=self.settings.threads, recipe=self.recipe,
            context_for=lambda tensor: recipe_context(self.recipe, tensor.info(), self.source),
        )
        for stacked in (self._experts.fc1, self._experts.fc2):
            for proto in (stacked.weight, stacked.scales, stacked.zero_points):
                if proto is not None:
                    g.add_initializer(proto)

    def _expert(self, t: SourceTensor) -> None:
        experts = self._experts
        if experts is None:
            raise UnsupportedModelError(f"tensor {t.name} arrived before its layer's router")
        storage = self.tensor_plan.storage(t.name)
        if storage != experts.storage:
            raise UnsupportedModelError(f"tensor {t.name} is planned as {storage.scheme.name}, its layer's experts as "
                                        f"{experts.storage.scheme.name}: QMoE stores them in one stacked tensor")
        experts.add(t)
        if experts.complete:
            self.digests.update(experts.digests)
            self._emit_moe(t.layer, experts)
            self._experts = None
            self.state.layers_done.add(t.layer)

    def _emit_moe(self, i: int, experts: StackedExperts) -> None:
        g, s = self.g, self.settings
        base = f"/model/layers.{i}/moe"
        route = self._routing
        common = dict(k=2, activation_type="swiglu", swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0,
                      normalize_routing_weights=0, use_sparse_mixer=route.use_sparse_mixer)
        x = g.node1("Reshape", [self.state.hidden, g.const([-1, self.config.hidden_size])], f"{base}/Reshape_in")
        fc1, fc2 = experts.fc1, experts.fc2
        if experts.quantized:
            inputs = [x, route.router_probs, fc1.weight.name, fc1.scales.name, "", fc2.weight.name, fc2.scales.name,
                      "", "", "", ""]
            if fc1.zero_points is not None:
                inputs += [fc1.zero_points.name, fc2.zero_points.name]
            out = g.node1(C.OP_QMOE, inputs, f"{base}/QMoE", domain=C.MS_DOMAIN, expert_weight_bits=experts.bits,
                          block_size=experts.block_size, weights_prepacked=0, accuracy_level=s.accuracy_level, **common)
        else:
            w1 = self._to_io(fc1.weight.name, experts.kind, f"{base}/fc1/Cast")
            w2 = self._to_io(fc2.weight.name, experts.kind, f"{base}/fc2/Cast")
            out = g.node1(C.OP_MOE, [x, route.router_probs, w1, "", w2], f"{base}/MoE", domain=C.MS_DOMAIN, **common)
        if route.output_scale:
            out = g.node1("Mul", [out, route.output_scale], f"{base}/scale/Mul")
        shape = g.node1("Shape", [self.state.hidden], f"{base}/Shape")
        self.state.pending = g.node1("Reshape", [out, shape], f"{base}/Reshape_out")

    # -- lm_head and its bias --------------------------------------------------------------------
    def _lm_head_weight(self, t: SourceTensor) -> None:
        storage = self.tensor_plan.storage(t.name)
        self._lm_stored = self._store(t, storage, "lm_head")
        self.choices["lm_head"] = storage.kind
        if not self.config.lm_head_bias:
            self._emit_lm_head(self._lm_stored)

    def _lm_head_bias(self, t: SourceTensor) -> None:
        if self._lm_stored is None:
            raise UnsupportedModelError(f"tensor {t.name} arrived before the lm_head")
        self._emit_lm_head(self._lm_stored, bias=self._norm_weight(t, "lm_head.bias"))

    def finish(self):
        if self._experts is not None:
            raise UnsupportedModelError(
                f"the tensor stream ended inside a mixture-of-experts layer: {', '.join(self._experts.missing()[:4])} "
                "never arrived; the checkpoint is incomplete"
            )
        return super().finish()
