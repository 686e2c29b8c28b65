"""The Phi3ForCausalLM decoder as an ONNX graph, built while the checkpoint streams past.

(PhiMoE's decoder, :mod:`phimoe`, subclasses this one: same inputs, outputs, KV cache, rotary and
attention; its own norms, projections and experts through :meth:`Phi3OnnxDecoder._handlers`.)

Tensors arrive in the core's canonical order (embedding; per layer: attn_norm, qkv, o,
ffn_norm, gate_up, down; final norm; lm_head unless tied), which is also a topological order of
the graph, so each tensor is written to the external-data file and its nodes are emitted at
once; nothing is kept but small protos.

The graph follows onnxruntime-genai's conventions (what its model builder emits for Phi-3):

* inputs ``input_ids``, ``attention_mask`` (``[batch, total_sequence_length]``),
  ``past_key_values.N.key/value`` (``[batch, kv_heads, past_sequence_length, head_size]``), and
  ``position_ids`` for LongRoPE or when rotary runs outside attention; outputs ``logits``
  (float32, every position) and ``present.N.key/value``;
* ONNX Runtime's fused CPU kernels: ``SkipSimplifiedLayerNormalization`` (RMSNorm with the
  residual add; the very first norm, which has no residual, is the standard
  ``RMSNormalization``), packed QKV into ``GroupQueryAttention`` with the rotary embedding done
  inside (``do_rotary``), ``MatMulNBits``.

Two attention plans, chosen from the head shape because ORT's kernel refuses some
(see :func:`attention_plan`):

``gqa_rotary``  GroupQueryAttention rotates Q/K itself from the cos/sin caches.
``rotary_op``   ``RotaryEmbedding`` ops (any partial rotary width) on Q and K using
                ``position_ids``, then GroupQueryAttention without rotary.

LongRoPE, in both plans: one concatenated [short; long] cache, and ``position_ids`` shifted by
the original context into the long rows when ``max(position_ids) >= original`` (the builder's
DirectML form), passed to GroupQueryAttention's ``position_ids`` input or to RotaryEmbedding.
The long factors are thus used exactly when the whole sequence (past + new) exceeds the
original context, which is what transformers does for a full-sequence run. The builder's CPU
form, an ``If`` choosing between two caches, copies the chosen cache on every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from phi_quant.errors import UnsupportedModelError, UnsupportedPrecisionError
from phi_quant.model.config import PhiConfig
from phi_quant.model.tensors import SourceTensor, TensorRole

from . import constants as C
from .dtypes import ONNX_FLOAT_TYPES, convert
from .external_data import ExternalDataWriter
from .graph import GraphBuilder
from .plan import OnnxPlan, Storage
from .rope import rope_caches
from .settings import OnnxSettings
from .weights import NBitsTensors, write_float, write_float_transposed, write_nbits

__all__ = ["AttentionPlan", "attention_plan", "Phi3OnnxDecoder"]


@dataclass(frozen=True)
class AttentionPlan:
    mode: str  # "gqa_rotary" | "rotary_op"
    reason: str


def attention_plan(config: PhiConfig, target: str = "cpu", rotary: str = "auto") -> AttentionPlan:
    """Pick how attention and rotary are expressed for this head shape, target and user choice."""
    head = config.head_dim
    half = config.rope.rotary_dim // 2
    if head % C.GQA_HEAD_MULTIPLE:
        raise UnsupportedModelError(
            f"head_dim {head} is not a multiple of {C.GQA_HEAD_MULTIPLE}: ONNX Runtime's GroupQueryAttention "
            "cannot run it; export this model with another backend"
        )
    if target == "dml":
        return AttentionPlan("rotary_op", "DirectML runs rotary as a separate RotaryEmbedding op (as the builder does)")
    if rotary == "op":
        return AttentionPlan("rotary_op", "RotaryEmbedding ops requested (--option rotary=op)")
    fits = head % C.GQA_ROTARY_HEAD_MULTIPLE == 0 and half % C.GQA_ROTARY_HALF_MULTIPLE == 0 and half <= head // 2
    if fits:
        return AttentionPlan("gqa_rotary", "rotary fused into GroupQueryAttention")
    if rotary == "fused":
        raise UnsupportedPrecisionError(
            f"--option rotary=fused: ONNX Runtime's GroupQueryAttention cannot rotate head_size {head} with a "
            f"cos/sin width of {half} (needs head_size % 16 == 0, width % 8 == 0 and <= head_size/2); use rotary=auto"
        )
    return AttentionPlan(
        "rotary_op",
        f"GroupQueryAttention's fused rotary needs head_size % 16 == 0 and a cos/sin width (rotary_dim/2 = {half}) "
        "that is a multiple of 8 and <= head_size/2; using RotaryEmbedding ops instead",
    )


@dataclass
class _Stored:
    """How one weight was stored: float initializer (with its kind) or MatMulNBits tensors."""

    kind: str
    float_tensor: TensorProto | None = None
    nbits: NBitsTensors | None = None


@dataclass
class _State:
    hidden: str = ""  # current normalized hidden state (input to the next MatMul)
    residual: str = ""  # running residual sum
    pending: str = ""  # output of the last block (attention or MLP), not yet added to residual
    layers_done: set = field(default_factory=set)


class Phi3OnnxDecoder:
    """Builds the graph; feed it every tensor with :meth:`consume`, then call :meth:`finish`."""

    def __init__(self, config: PhiConfig, settings: OnnxSettings, writer: ExternalDataWriter, plan: OnnxPlan,
                 source=None):
        from phi_quant.quant.recipes import get_recipe

        self.config = config
        self.settings = settings
        self.writer = writer
        self.tensor_plan = plan
        self.source = source
        self.recipe = get_recipe(plan.tensor_plan.recipe)
        #: source tensor name -> {array key: initializer written}, for the manifest's byte digests
        self.written: dict[str, dict[str, TensorProto]] = {}
        self.g = GraphBuilder()
        self.plan = attention_plan(config, settings.target, settings.rotary)
        self.io_kind = settings.io_dtype
        self.io_type = ONNX_FLOAT_TYPES[self.io_kind][0]
        self.context_length = int(settings.context_length or config.max_position_embeddings)
        self.state = _State()
        self._embed_stored: _Stored | None = None
        self._tied_lm_head: _Stored | None = None
        self._lm_head_done = False
        self.choices: dict[str, str] = {}
        self._make_inputs()
        self._make_mask_subgraph()
        self._make_rotary_caches()

    # -- graph I/O ----------------------------------------------------------------------------
    def _make_inputs(self) -> None:
        g, cfg = self.g, self.config
        g.add_input(C.INPUT_IDS, TensorProto.INT64, ["batch_size", "sequence_length"])
        g.add_input(C.ATTENTION_MASK, TensorProto.INT64, ["batch_size", "total_sequence_length"])
        if self.plan.mode == "rotary_op" or cfg.rope.is_longrope:
            g.add_input(C.POSITION_IDS, TensorProto.INT64, ["batch_size", "sequence_length"])
        g.add_output(C.LOGITS, TensorProto.FLOAT, ["batch_size", "sequence_length", cfg.vocab_size])
        for i in range(cfg.num_layers):
            for pattern in (C.PAST_KEY, C.PAST_VALUE):
                g.add_input(pattern.format(i), self.io_type, ["batch_size", cfg.num_kv_heads, "past_sequence_length", cfg.head_dim])
        for i in range(cfg.num_layers):
            for pattern in (C.PRESENT_KEY, C.PRESENT_VALUE):
                g.add_output(pattern.format(i), self.io_type, ["batch_size", cfg.num_kv_heads, "total_sequence_length", cfg.head_dim])

    def _make_mask_subgraph(self) -> None:
        """seqlens_k = sum(mask) - 1 (int32 [batch]); total_sequence_length (int32 scalar)."""
        g = self.g
        base = "/model/attn_mask_reformat"
        total = g.node1("ReduceSum", [C.ATTENTION_MASK, g.const([1])], f"{base}/ReduceSum", keepdims=0)
        minus1 = g.node1("Sub", [total, g.const([1])], f"{base}/Sub")
        self.seqlens_k = g.node1("Cast", [minus1], f"{base}/Sub/Cast", to=TensorProto.INT32)
        shape = g.node1("Shape", [C.ATTENTION_MASK], f"{base}/Shape")
        self.total_len_i64 = g.node1("Gather", [shape, g.const(1)], f"{base}/Gather", axis=0)
        self.total_len = g.node1("Cast", [self.total_len_i64], f"{base}/Gather/Cast", to=TensorProto.INT32)

    def _cache(self, name: str, array: np.ndarray) -> str:
        return self.g.add_initializer(self.writer.add(name, convert(array, "f32", self.io_kind), self.io_type))

    def _make_rotary_caches(self) -> None:
        g = self.g
        caches = rope_caches(self.config, self.context_length)
        if caches.long_cos is None:
            self.positions = C.POSITION_IDS if self.plan.mode == "rotary_op" else ""
            self.cos = self._cache(C.COS_CACHE, caches.short_cos)
            self.sin = self._cache(C.SIN_CACHE, caches.short_sin)
            self.choices["rope"] = "single cache"
            return
        # LongRoPE: one [short; long] cache, long rows starting at the original context, and
        # position ids shifted into the long half when the sequence outgrows the original context.
        # (An If choosing between two caches, as the builder does, copies the chosen cache on
        # every step: 50 MB per token for a 128k Phi-3.5; this form reads it in place.)
        orig = int(caches.original_context)
        short_rows = caches.short_cos.shape[0]
        pad = np.zeros((max(orig - short_rows, 0), caches.half), np.float32)  # context < original: never read
        self.cos = self._cache(C.COS_CACHE, np.concatenate([caches.short_cos, pad, caches.long_cos]))
        self.sin = self._cache(C.SIN_CACHE, np.concatenate([caches.short_sin, pad, caches.long_sin]))
        base = "/model/pos_ids_reformat"
        top = g.node1("ReduceMax", [C.POSITION_IDS], f"{base}/ReduceMax", keepdims=0)
        is_long = g.node1("GreaterOrEqual", [top, g.const(orig)], f"{base}/GreaterOrEqual")
        shift = g.node1("Mul", [g.node1("Cast", [is_long], f"{base}/Cast", to=TensorProto.INT64), g.const(orig)], f"{base}/Mul")
        self.positions = g.node1("Add", [shift, C.POSITION_IDS], f"{base}/Add")
        self.choices["rope"] = (
            f"LongRoPE: one [short; long] cache; positions shifted by {orig} into the long rows when "
            f"max(position_ids) >= {orig}, i.e. when the whole sequence is longer than {orig}"
        )

    @property
    def uses_position_ids(self) -> bool:
        """True when the graph reads ``position_ids`` (rotary outside attention, or LongRoPE)."""
        return bool(self.positions)

    # -- weights -> nodes ---------------------------------------------------------------------
    def _store(self, tensor: SourceTensor, storage: Storage, prefix: str, key_prefix: str = "") -> _Stored:
        from phi_quant.quant.plan import recipe_context

        s = self.settings
        record = self.written.setdefault(tensor.name, {})
        if storage.quantized:
            nb = write_nbits(
                self.writer, prefix, tensor, storage.scheme, scale_kind=self.io_kind, threads=s.threads,
                recipe=self.recipe, context=recipe_context(self.recipe, tensor.info(), self.source),
            )
            for key, t in (("B", nb.B), ("scales", nb.scales), ("zero_points", nb.zero_points)):
                if t is not None:
                    self.g.add_initializer(t)
                    record[key_prefix + key] = t
            return _Stored(storage.kind, nbits=nb)
        writer = write_float_transposed if storage.transposed else write_float
        proto = writer(self.writer, f"{prefix}.weight", tensor, storage.kind)
        self.g.add_initializer(proto)
        record[key_prefix + "weight"] = proto
        return _Stored(storage.kind, float_tensor=proto)

    def _to_io(self, name: str, kind: str, node_name: str) -> str:
        if kind == self.io_kind:
            return name
        return self.g.node1("Cast", [name], node_name, to=self.io_type)

    def _matmul(self, x: str, stored: _Stored, base: str, out: str | None = None) -> str:
        g, s = self.g, self.settings
        outputs = [out] if out else 1
        if stored.nbits is not None:
            nb = stored.nbits
            inputs = [x, nb.B.name, nb.scales.name] + ([nb.zero_points.name] if nb.zero_points is not None else [])
            return g.node(
                C.OP_MATMUL_NBITS, inputs, f"{base}/MatMulNBits", outputs=outputs, domain=C.MS_DOMAIN,
                K=nb.k, N=nb.n, bits=nb.bits, block_size=nb.block_size, accuracy_level=s.accuracy_level,
            )[0]
        w = self._to_io(stored.float_tensor.name, stored.kind, f"{base}/weight/Cast")
        return g.node("MatMul", [x, w], f"{base}/MatMul", outputs=outputs)[0]

    def _norm_weight(self, tensor: SourceTensor, name: str) -> str:
        proto = write_float(self.writer, name, tensor, self.io_kind)
        self.written.setdefault(tensor.name, {})["weight"] = proto
        return self.g.add_initializer(proto)

    def _handlers(self) -> dict:
        """The method that writes each tensor role (a layout's decoder extends this table)."""
        return {
            TensorRole.EMBED: self._embedding,
            TensorRole.ATTN_NORM: self._attn_norm,
            TensorRole.QKV: self._attention,
            TensorRole.O: self._o_proj,
            TensorRole.FFN_NORM: self._ffn_norm,
            TensorRole.GATE_UP: self._mlp_up,
            TensorRole.DOWN: self._mlp_down,
            TensorRole.FINAL_NORM: self._final_norm,
            TensorRole.LM_HEAD: self._lm_head,
        }

    def consume(self, tensor: SourceTensor) -> None:
        """Write one streamed tensor and emit the nodes that use it."""
        role = TensorRole(tensor.role)
        handler = self._handlers().get(role)
        if handler is None:
            raise UnsupportedModelError(f"tensor {tensor.name} ({role.value}) has no place in the ONNX graph; stream fused tensors")
        handler(tensor)

    def _embedding(self, t: SourceTensor) -> None:
        g, cfg = self.g, self.config
        storage = self.tensor_plan.storage(t.name)
        kind = storage.kind
        stored = self._store(t, storage, "model.embed_tokens")
        self._embed_stored = stored
        base = "/model/embed_tokens"
        if stored.nbits is not None:
            nb = stored.nbits
            g.add_initializer(nb.gather_data)
            inputs = [nb.gather_data.name, C.INPUT_IDS, nb.scales.name] + ([nb.zero_points.name] if nb.zero_points is not None else [])
            out = g.node1(
                C.OP_GATHER_BLOCK_QUANTIZED, inputs, f"{base}/GatherBlockQuantized", domain=C.MS_DOMAIN,
                bits=nb.bits, block_size=nb.block_size, gather_axis=0, quantize_axis=1,
            )
            if nb.k % nb.block_size:
                out = g.node1("Slice", [out, g.const([0]), g.const([cfg.hidden_size]), g.const([-1])], f"{base}/Slice")
        else:
            out = g.node1("Gather", [stored.float_tensor.name, C.INPUT_IDS], f"{base}/Gather")
            out = self._to_io(out, kind, f"{base}/Cast")
        self.state.pending = out
        self.choices["embeddings"] = kind
        if cfg.tie_word_embeddings:
            head = self.tensor_plan.tied_head
            if head is None:
                self._tied_lm_head = stored
                self.choices["lm_head"] = f"{kind} (shares the embedding table)"
            else:
                self._tied_lm_head = self._store(t, head, "lm_head", key_prefix="lm_head.")
                self.choices["lm_head"] = f"{head.kind} (tied embeddings stored a second time)"

    def _skip_norm(self, weight: str, base: str, last: bool = False, bias: str | None = None) -> None:
        """Norm of (pending + residual); the sum becomes the new residual.

        RMSNorm for Phi-3; with ``bias`` (a LayerNorm's shift) the LayerNorm ops instead.
        """
        g, st = self.g, self.state
        eps = float(self.config.rms_norm_eps)
        layer = bias is not None
        if not st.residual:
            if layer:
                st.hidden = g.node1(C.OP_LAYERNORM, [st.pending, weight, bias], f"{base}/LayerNorm", axis=-1,
                                    epsilon=eps, stash_type=1)
            else:
                st.hidden = g.node1(C.OP_RMSNORM, [st.pending, weight], f"{base}/RMSNorm", axis=-1, epsilon=eps, stash_type=1)
            st.residual = st.pending
            st.pending = ""
            return
        op = C.OP_SKIP_LAYERNORM if layer else C.OP_SKIP_RMSNORM
        inputs = [st.pending, st.residual, weight] + ([bias] if layer else [])
        if last:
            st.hidden = g.node1(op, inputs, f"{base}/SkipLayerNorm", domain=C.MS_DOMAIN, epsilon=eps)
        else:
            out, _, _, total = g.node(
                op, inputs, f"{base}/SkipLayerNorm",
                outputs=[f"{base}/output_0", "", "", f"{base}/output_3"], domain=C.MS_DOMAIN, epsilon=eps,
            )
            st.hidden, st.residual = out, total
        st.pending = ""

    def _attn_norm(self, t: SourceTensor) -> None:
        w = self._norm_weight(t, f"{C.layer_prefix(t.layer)}.input_layernorm.weight")
        self._skip_norm(w, f"/model/layers.{t.layer}/input_layernorm")

    def _ffn_norm(self, t: SourceTensor) -> None:
        w = self._norm_weight(t, f"{C.layer_prefix(t.layer)}.post_attention_layernorm.weight")
        self._skip_norm(w, f"/model/layers.{t.layer}/post_attention_layernorm")

    def _final_norm(self, t: SourceTensor) -> None:
        w = self._norm_weight(t, C.FINAL_NORM)
        self._skip_norm(w, "/model/norm", last=True)
        if self.config.tie_word_embeddings:
            self._emit_lm_head(self._tied_lm_head)

    def _attention(self, t: SourceTensor) -> None:
        i = t.layer
        stored = self._store(t, self.tensor_plan.storage(t.name), f"{C.layer_prefix(i)}.self_attn.qkv_proj")
        qkv = self._matmul(self.state.hidden, stored, f"/model/layers.{i}/attn/qkv_proj")
        self._attn_out = self._gqa(i, qkv)

    def _gqa(self, i: int, query: str, key: str = "", value: str = "") -> str:
        """GroupQueryAttention of layer ``i`` on packed QKV (``query`` alone) or separate Q, K, V."""
        g, cfg = self.g, self.config
        base = f"/model/layers.{i}/attn"
        common = dict(
            num_heads=cfg.num_heads,
            kv_num_heads=cfg.num_kv_heads,
            scale=1.0 / math.sqrt(cfg.head_dim),
            local_window_size=int(cfg.sliding_window) if cfg.sliding_window else -1,
            rotary_interleaved=0,
        )
        past = [C.PAST_KEY.format(i), C.PAST_VALUE.format(i)]
        present = [C.PRESENT_KEY.format(i), C.PRESENT_VALUE.format(i)]
        outputs = [f"{base}/GroupQueryAttention/output_0", *present]
        if self.plan.mode == "gqa_rotary":
            inputs = [query, key, value, *past, self.seqlens_k, self.total_len, self.cos, self.sin]
            if self.positions:  # LongRoPE: GroupQueryAttention rotates with these (shifted) positions
                inputs.append(self.positions)
            return g.node(C.OP_GQA, inputs, f"{base}/GroupQueryAttention", outputs=outputs, domain=C.MS_DOMAIN,
                          do_rotary=1, **common)[0]
        q, k, v = query, key, value
        if not key:
            q, k, v = g.node("Split", [query, g.const([cfg.q_size, cfg.kv_size, cfg.kv_size])], f"{base}/qkv/Split",
                             outputs=3, axis=-1)
        rd = cfg.rope.rotary_dim
        q = g.node1(C.OP_ROTARY, [q, self.positions, self.cos, self.sin], f"{base}/q_rotary/RotaryEmbedding",
                    domain=C.MS_DOMAIN, num_heads=cfg.num_heads, rotary_embedding_dim=rd, interleaved=0)
        k = g.node1(C.OP_ROTARY, [k, self.positions, self.cos, self.sin], f"{base}/k_rotary/RotaryEmbedding",
                    domain=C.MS_DOMAIN, num_heads=cfg.num_kv_heads, rotary_embedding_dim=rd, interleaved=0)
        inputs = [q, k, v, *past, self.seqlens_k, self.total_len]
        return g.node(C.OP_GQA, inputs, f"{base}/GroupQueryAttention", outputs=outputs, domain=C.MS_DOMAIN,
                      do_rotary=0, **common)[0]

    def _o_proj(self, t: SourceTensor) -> None:
        i = t.layer
        stored = self._store(t, self.tensor_plan.storage(t.name), f"{C.layer_prefix(i)}.self_attn.o_proj")
        self.state.pending = self._matmul(self._attn_out, stored, f"/model/layers.{i}/attn/o_proj")

    def _mlp_up(self, t: SourceTensor) -> None:
        g, i = self.g, t.layer
        base = f"/model/layers.{i}/mlp"
        stored = self._store(t, self.tensor_plan.storage(t.name), f"{C.layer_prefix(i)}.mlp.gate_up_proj")
        gate_up = self._matmul(self.state.hidden, stored, f"{base}/gate_up_proj")
        inter = self.config.intermediate_size
        gate, up = g.node("Split", [gate_up, g.const([inter, inter])], f"{base}/Split", outputs=2, axis=-1)
        silu = g.node1("Mul", [gate, g.node1("Sigmoid", [gate], f"{base}/act_fn/Sigmoid")], f"{base}/act_fn/Mul")
        self._mlp_act = g.node1("Mul", [silu, up], f"{base}/Mul")

    def _mlp_down(self, t: SourceTensor) -> None:
        i = t.layer
        stored = self._store(t, self.tensor_plan.storage(t.name), f"{C.layer_prefix(i)}.mlp.down_proj")
        self.state.pending = self._matmul(self._mlp_act, stored, f"/model/layers.{i}/mlp/down_proj")
        self.state.layers_done.add(i)

    def _lm_head(self, t: SourceTensor) -> None:
        storage = self.tensor_plan.storage(t.name)
        stored = self._store(t, storage, "lm_head")
        self.choices["lm_head"] = storage.kind
        self._emit_lm_head(stored)

    def _emit_lm_head(self, stored: _Stored, bias: str | None = None) -> None:
        g, cfg = self.g, self.config
        base = "/lm_head"
        final = C.LOGITS if self.io_kind == "fp32" else None  # the graph output, when no Cast follows
        logits_name = final if bias is None else None
        shared_table = stored is self._embed_stored and stored.float_tensor is not None
        if shared_table:
            # Tied float table [vocab, hidden]: Gemm with transB reads it in place (MatMul would
            # need a transposed copy). Gemm is 2-D, so flatten [batch, seq] around it.
            table = self._to_io(stored.float_tensor.name, stored.kind, f"{base}/weight/Cast")
            flat = g.node1("Reshape", [self.state.hidden, g.const([-1, cfg.hidden_size])], f"{base}/Reshape_in")
            y = g.node1("Gemm", [flat, table], f"{base}/Gemm", transB=1)
            lead = g.node1("Slice", [g.node1("Shape", [self.state.hidden], f"{base}/Shape"), g.const([0]), g.const([2])], f"{base}/Slice")
            shape = g.node1("Concat", [lead, g.const([cfg.vocab_size])], f"{base}/Concat", axis=0)
            out = g.node("Reshape", [y, shape], f"{base}/Reshape_out", outputs=[logits_name] if logits_name else 1)[0]
        else:
            out = self._matmul(self.state.hidden, stored, base, out=logits_name)
        if bias is not None:
            out = g.node("Add", [out, bias], f"{base}/Add", outputs=[final] if final else 1)[0]
        if final is None:
            g.node("Cast", [out], f"{base}/output/Cast", outputs=[C.LOGITS], to=TensorProto.FLOAT)
        self._lm_head_done = True

    # -- result -------------------------------------------------------------------------------
    def finish(self) -> onnx.ModelProto:
        cfg = self.config
        missing = sorted(set(range(cfg.num_layers)) - self.state.layers_done)
        if missing or not self._lm_head_done:
            what = f"layers {missing[:5]}" if missing else "the lm_head"
            raise UnsupportedModelError(f"the tensor stream ended before {what} arrived; the checkpoint is incomplete")
        meta = {
            "phi_quant.attention": self.plan.mode,
            "phi_quant.scheme": self.settings.scheme,
            "phi_quant.target": self.settings.target,
        }
        return self.g.to_model(meta)
