"""PhiMoE on the onnx backend: the runtime's MoE / QMoE kernels pinned, the routing subgraph held to
sparsemixer, and the tiny PhiMoE run in onnxruntime-genai against the oracle.

The conformance kit (test_conformance.py) also runs every precision on the ``phimoe`` variant
with the declared thresholds; these tests check what the kit cannot see: the op layouts this
writer relies on, routing at near-ties, and the quantized graph against the oracle on the
dequantized weights.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from phi_quant.arch.oracle import silu, sparsemixer
from phi_quant.quant import matmulnbits_dequantize, matmulnbits_quantize

from phi_quant_onnx import constants as C
from phi_quant_onnx import plugin
from phi_quant_onnx.graph import GraphBuilder
from phi_quant_onnx.routing import sparsemixer_routing

VARIANT = "phimoe"
E, H, I, T = 4, 64, 32, 12


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _logits(rng: np.random.Generator) -> np.ndarray:
    """Router logits with plain rows and near-ties inside and just outside a 0.01 jitter's window."""
    logits = rng.standard_normal((T, E)).astype(np.float32)
    logits[0] = [1.0, 0.995, 0.3, -1.0]  # second best within 2*0.01 of the best: shares its weight
    logits[1] = [1.0, 0.97, 0.969, -1.0]  # second and third nearly tied: the second pick's weight is shared
    logits[2] = [0.5, 0.5, 0.1, 0.0]  # an exact tie: argmax takes the first
    logits[3] = [-0.2, -0.3, -0.2005, -2.0]  # negative logits: the window is relative to max(|logit|, best)
    logits[4] = [0.0, 0.0, 0.0, 0.0]  # all zero: 0/0 is "not far", as in torch
    return logits


def _routing_model(jitter: float) -> onnx.ModelProto:
    g = GraphBuilder()
    g.add_input("logits", TensorProto.FLOAT, [T, E])
    route = sparsemixer_routing(g, "logits", jitter, "/route", E)
    g.node("Identity", [route.router_probs], "/probs", outputs=["probs"])
    g.node("Identity", [route.output_scale], "/scale", outputs=["scale"])
    g.add_output("probs", TensorProto.FLOAT, [T, E])
    g.add_output("scale", TensorProto.FLOAT, [T, 1])
    return g.to_model()


@pytest.mark.parametrize("jitter", [0.01, 0.05])
def test_routing_subgraph_gives_sparsemixer_weights(jitter):
    """softmax(router_probs) * scale, what the MoE kernel ends up applying, is sparsemixer's weight on
    exactly its two experts and 0 elsewhere, near-ties included."""
    logits = _logits(np.random.default_rng(1))
    probs, scale = _session(_routing_model(jitter)).run(None, {"logits": logits})
    picks, weights = sparsemixer(logits, jitter)
    want = np.zeros((T, E), np.float32)
    np.put_along_axis(want, picks, weights, axis=-1)
    e = np.exp(probs - probs.max(-1, keepdims=True))
    got = e / e.sum(-1, keepdims=True) * scale
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert (weights[0] < 1).any() and (weights[1] < 1).any(), "the near-tie rows must exercise shared weights"


# -- the kernels: layouts and attributes the writer relies on --------------------------------------
def _moe_reference(x, logits, w1, w3, w2, jitter=0.01):
    picks, weights = sparsemixer(logits, jitter)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(2):
            e = picks[t, j]
            out[t] += weights[t, j] * ((silu(x[t] @ w1[e].T) * (x[t] @ w3[e].T)) @ w2[e].T)
    return out


def _interleave(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    out = np.empty((gate.shape[0], 2 * gate.shape[1]) + gate.shape[2:], gate.dtype)
    out[:, 0::2], out[:, 1::2] = gate, up
    return out


def _moe_model(op: str, inits: dict[str, np.ndarray], inputs: list[str], **attrs) -> onnx.ModelProto:
    g = GraphBuilder()
    g.add_input("x", TensorProto.FLOAT, [T, H])
    g.add_input("logits", TensorProto.FLOAT, [T, E])
    for name, value in inits.items():
        g.add_initializer(numpy_helper.from_array(value, name))
    route = sparsemixer_routing(g, "logits", 0.01, "/route", E)
    out = g.node1(op, ["x", route.router_probs, *inputs], f"/{op}", domain=C.MS_DOMAIN, k=2, activation_type="swiglu",
                  swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0, normalize_routing_weights=0, **attrs)
    g.node("Mul", [out, route.output_scale], "/scale", outputs=["y"])
    g.add_output("y", TensorProto.FLOAT, [T, H])
    return g.to_model()


def _experts(rng):
    w1, w3 = (rng.standard_normal((2, E, I, H)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((E, H, I)) * 0.2).astype(np.float32)
    return w1, w3, w2


def test_moe_kernel_computes_phimoe_experts():
    """MoE: fc1 [E, 2I, H] with gate/up rows interleaved (gate first), fc2 [E, H, I] as Hugging Face
    stores w2, swiglu with alpha 1 / beta 0 = silu(gate) * up; with our routing, the PhiMoE MLP."""
    rng = np.random.default_rng(2)
    x, logits = rng.standard_normal((T, H)).astype(np.float32), _logits(rng)
    w1, w3, w2 = _experts(rng)
    model = _moe_model(C.OP_MOE, {"fc1": _interleave(w1, w3), "fc2": w2}, ["fc1", "", "fc2"])
    got = _session(model).run(None, {"x": x, "logits": logits})[0]
    np.testing.assert_allclose(got, _moe_reference(x, logits, w1, w3, w2), rtol=1e-5, atol=1e-5)


def test_cpu_moe_kernel_ignores_use_sparse_mixer():
    """Why routing is in the graph: onnxruntime 1.32's CPU MoE kernel, given the raw router logits and
    ``use_sparse_mixer=1``, routes softmax-then-top-2 exactly as without it (weights the softmax
    probabilities), not sparsemixer (1 and 1 unless logits nearly tie). If a later onnxruntime
    implements it, this fails: then compare its window with ``router_jitter_noise`` before using it."""
    from phi_quant.arch.oracle import softmax

    rng = np.random.default_rng(4)
    x, logits = rng.standard_normal((T, H)).astype(np.float32), _logits(rng)
    logits[4] = [0.0, 0.1, 0.2, 0.3]  # no exact ties here: the kernel breaks those towards the last index
    w1, w3, w2 = _experts(rng)
    g = GraphBuilder()
    g.add_input("x", TensorProto.FLOAT, [T, H])
    g.add_input("logits", TensorProto.FLOAT, [T, E])
    g.add_initializer(numpy_helper.from_array(_interleave(w1, w3), "fc1"))
    g.add_initializer(numpy_helper.from_array(w2, "fc2"))
    g.node(C.OP_MOE, ["x", "logits", "fc1", "", "fc2"], "/MoE", outputs=["y"], domain=C.MS_DOMAIN, k=2,
           activation_type="swiglu", swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0,
           normalize_routing_weights=0, use_sparse_mixer=1)
    g.add_output("y", TensorProto.FLOAT, [T, H])
    got = _session(g.to_model()).run(None, {"x": x, "logits": logits})[0]
    probs = softmax(logits)
    picks = np.argsort(-probs, axis=-1, kind="stable")[:, :2]
    top2 = np.zeros_like(x)
    for t in range(T):
        for j in range(2):
            e = picks[t, j]
            top2[t] += probs[t, e] * ((silu(x[t] @ w1[e].T) * (x[t] @ w3[e].T)) @ w2[e].T)
    np.testing.assert_allclose(got, top2, rtol=1e-5, atol=1e-5)
    assert np.abs(got - _moe_reference(x, logits, w1, w3, w2)).max() > 0.1


def _pack(w: np.ndarray, bits: int, symmetric: bool, block: int = 32):
    """Per-expert MatMulNBits bytes stacked as QMoE reads them, and the dequantized weights."""
    parts = []
    for e in range(w.shape[0]):
        B, s, z = matmulnbits_quantize(w[e], bits=bits, block_size=block, symmetric=symmetric)
        n, k = w[e].shape
        B, s = np.asarray(B, np.uint8).reshape(n, -1), np.asarray(s).reshape(n, -1)
        z = None if symmetric else np.asarray(z, np.uint8).reshape(n, -1)
        parts.append((B, s, z, matmulnbits_dequantize(B, s, z, bits=bits, block_size=block, k=k)))
    stack = [np.stack([p[j] for p in parts]) if parts[0][j] is not None else None for j in range(4)]
    return stack


@pytest.mark.parametrize("bits,symmetric,level,tolerance",
                         [(4, True, 0, 1e-5), (4, False, 0, 1e-5), (8, True, 0, 2e-2), (8, False, 0, 2e-2)])
def test_qmoe_kernel_reads_matmulnbits_bytes(bits, symmetric, level, tolerance):
    """QMoE (weights_prepacked=0, block_size 32): each expert's MatMulNBits B / scales / zero points
    as our kernel packs them, fc1 rows interleaved. 4-bit at accuracy_level 0 computes the
    dequantized model exactly; 8-bit experts always run int8 activations in onnxruntime's CPU
    kernel (its schema: no fp32 kernel for block-wise 8-bit), hence the looser bound."""
    rng = np.random.default_rng(3)
    x, logits = rng.standard_normal((T, H)).astype(np.float32), _logits(rng)
    w1, w3, w2 = _experts(rng)
    B1, S1, Z1, D1 = _pack(w1, bits, symmetric)
    B3, S3, Z3, D3 = _pack(w3, bits, symmetric)
    B2, S2, Z2, D2 = _pack(w2, bits, symmetric)
    inits = {"fc1": _interleave(B1, B3), "fc1s": _interleave(S1, S3), "fc2": B2, "fc2s": S2}
    inputs = ["fc1", "fc1s", "", "fc2", "fc2s", "", "", "", ""]
    if not symmetric:
        inits.update(fc1z=_interleave(Z1, Z3), fc2z=Z2)
        inputs += ["fc1z", "fc2z"]
    model = _moe_model(C.OP_QMOE, inits, inputs, expert_weight_bits=bits, block_size=32, weights_prepacked=0,
                       accuracy_level=level)
    got = _session(model).run(None, {"x": x, "logits": logits})[0]
    want = _moe_reference(x, logits, D1, D3, D2)
    assert np.abs(got - want).max() <= tolerance * np.abs(want).max()


# -- the tiny PhiMoE end to end in onnxruntime-genai ----------------------------------------------
def _compare(model, rows):
    from phi_quant.fidelity import compare_logits

    kl = top1 = worst = 0.0
    n = 0
    for prompt, ids, ref_logits in rows:
        assert model.tokenize(prompt) == list(ids), f"genai tokenizes {prompt!r} differently from Hugging Face"
        r = compare_logits(ref_logits, model.logits(ids))
        kl += r.kl_mean * r.positions
        top1 += r.top1_agreement * r.positions
        n += r.positions
        worst = max(worst, r.max_abs_diff)
    return kl / n, top1 / n, worst


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4"])
def test_phimoe_runs_in_genai_and_matches_oracle(precision, exported, oracle):
    import json

    out, result = exported(VARIANT, precision)
    genai = json.loads((out / C.GENAI_CONFIG_FILE).read_text())
    assert genai["model"]["type"] == "phimoe"
    assert result.details["experts"].startswith(C.OP_QMOE if precision in ("int4", "int8") else C.OP_MOE)
    ref, rows = oracle(VARIANT)
    th = next(s for s in plugin.supported_precisions() if s.precision == precision).thresholds_for("phimoe")
    model = plugin.load_model(path=out, options={})
    try:
        kl, top1, worst = _compare(model, rows)
        summary = f"phimoe {precision}: KL {kl:.3g}, top-1 {top1:.4f}, max|dlogit| {worst:.3g}"
        print(summary)
        assert kl <= th.kl_max and top1 >= th.top1_min, summary
        if th.max_abs_logit is not None:
            assert worst <= th.max_abs_logit, summary
        prompt, ids, _ = rows[0]
        new = model.generate_ids(ids, max_new_tokens=6)  # genai's greedy search, KV cache in use
        assert 1 <= len(new) <= 6
        if precision == "fp32":
            assert new == ref.generate(ids, max_new_tokens=6, eos_ids=model.eos_ids), summary
    finally:
        model.close()


def test_qmoe_graph_equals_oracle_on_dequantized_weights(sources, exported, oracle):
    """int4 at accuracy_level 0: the whole QMoE graph computes what the oracle computes on the weights
    our quantize hook dequantizes (the hook and the stacked experts share the kernel's bytes)."""
    from phi_quant.reference import ReferenceModel
    from phi_quant.types import ExportOptions

    src = sources(VARIANT)
    options = ExportOptions(precision="int4", extra={"embeddings": "fp16"})
    deq = ReferenceModel(src.config, {t.name: plugin.quantize(tensor=t, options=options).dequantize() for t in src.tensors()})
    out, _ = exported(VARIANT, "int4", accuracy_level=0)
    model = plugin.load_model(path=out, options={})
    try:
        for _, ids, _ in oracle(VARIANT)[1]:
            want, got = deq.logits(ids), model.logits(ids)
            assert np.abs(want - got).max() <= 1e-3
            assert (want.argmax(-1) == got.argmax(-1)).all()
    finally:
        model.close()


def test_phimoe_block_size_must_divide_the_experts(sources):
    """QMoE blocks must divide hidden and intermediate sizes: refused before export, naming the sizes that fit."""
    import dataclasses

    from phi_quant.errors import UnsupportedPrecisionError
    from phi_quant.types import ExportOptions

    from phi_quant_onnx.settings import settings_from_options

    config = dataclasses.replace(sources(VARIANT).config, intermediate_size=528)  # 16 * 33
    with pytest.raises(UnsupportedPrecisionError, match="QMoE.*block size 32.*--group-size 16"):
        settings_from_options(ExportOptions(precision="int4", group_size=32), config)
    assert settings_from_options(ExportOptions(precision="int4", group_size=16), config).block_size == 16
    assert settings_from_options(ExportOptions(precision="fp16"), config).body == "fp16"


def test_phimoe_with_rotary_ops_matches_oracle(exported, oracle):
    """The rotary_op plan (separate RotaryEmbedding on the unpacked Q and K) is exact too."""
    out, result = exported(VARIANT, "fp32", rotary="op")
    assert result.details["attention"] == "rotary_op"
    model = plugin.load_model(path=out, options={})
    try:
        kl, top1, worst = _compare(model, oracle(VARIANT)[1])
    finally:
        model.close()
    assert kl <= 1e-6 and top1 == 1.0 and worst <= 1e-3, (kl, top1, worst)


@pytest.mark.parametrize("target,precision", [("cuda", "fp16"), ("cuda", "int4"), ("dml", "fp16")])
def test_phimoe_gpu_graphs_run_on_the_cpu_provider(target, precision, sources, oracle, tmp_path):
    """cuda/dml exports (fp16 activations: MoE/QMoE in float16, routing still in float32) are untested
    on their providers here; as a structural check the graph runs under the CPU provider."""
    import onnxruntime as ort

    from phi_quant.fidelity import compare_logits
    from phi_quant.types import ExportOptions, NullProgress

    src = sources(VARIANT)
    plugin.export(source=src, output_dir=tmp_path, options=ExportOptions(precision=precision, target=target),
                  progress=NullProgress())
    onnx.checker.check_model(str(tmp_path / C.MODEL_FILE))
    sess = ort.InferenceSession(str(tmp_path / C.MODEL_FILE), providers=["CPUExecutionProvider"])
    c = src.config
    _, ids, want = oracle(VARIANT)[1][0]
    feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
             "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
    for i in range(c.num_layers):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = np.zeros((1, c.num_kv_heads, 0, c.head_dim), np.float16)
    r = compare_logits(want, sess.run(["logits"], feeds)[0][0])
    th = next(s for s in plugin.supported_precisions() if s.precision == precision).thresholds_for("phimoe")
    # fp16 activations: measured KL 6.2e-6, top-1 1.0 (the dense bound for them is 1e-3)
    kl_max, top1_min = (1e-3, 0.9) if precision == "fp16" else (th.kl_max, th.top1_min)
    assert r.kl_mean <= kl_max and r.top1_agreement >= top1_min, r


def test_plan_refuses_a_layer_whose_experts_differ(sources):
    """MoE/QMoE read a layer's experts from stacked tensors of one storage: a plan that would store
    one expert differently is refused before export; the default plan stores them alike."""
    from phi_quant.errors import UnsupportedPrecisionError
    from phi_quant.types import ExportOptions

    from phi_quant_onnx.plan import _storage, check_expert_stacks, plan_model

    src = sources(VARIANT)
    infos = src.tensor_infos()
    plan = plan_model(src.config, infos, ExportOptions(precision="int4"))
    experts = [i for i in infos if i.expert is not None]
    assert len({plan.storage(i.name) for i in experts}) == 1
    assert plan.storage(experts[0].name).scheme.name == "MatMulNBits-4bit-b32-sym"
    router = next(i for i in infos if i.role.value == "router")
    assert plan.storage(router.name).kind == "fp32"  # float router by default
    storages = dict(plan.storages)
    storages[experts[-1].name] = _storage("int8", plan.settings, False)
    with pytest.raises(UnsupportedPrecisionError, match="layer 1's experts would be stored differently"):
        check_expert_stacks(infos, storages)
