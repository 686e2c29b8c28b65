"""PhiMoE in OpenVINO: sparsemixer's routing as graph ops, the MoE IR, and the fp32 export against
the plain oracle to KL 1e-6. test_runtime.py runs the tiny PhiMoE like the dense variants (every
precision against the oracle on the stored weights, LLMPipeline's greedy tokens, the stateful
cache, paged attention); the conformance kit runs it by declaration."""

from __future__ import annotations

import numpy as np
import openvino as ov
from openvino import opset13 as ops

from phi_quant.arch.oracle import sparsemixer as oracle_sparsemixer
from phi_quant.fidelity import compare_logits
from phi_quant.model.source import open_model
from phi_quant.reference import ReferenceModel
from phi_quant.testing.factory import cached_checkpoint, variant_spec
from phi_quant.testing.prompts import test_prompts
from phi_quant_openvino.phimoe import sparsemixer
from phi_quant_openvino.runtime import OpenVINOModel

VARIANT = "phimoe"


def _dense(picks: np.ndarray, weights: np.ndarray, experts: int) -> np.ndarray:
    out = np.zeros((picks.shape[0], experts), dtype=np.float32)
    np.put_along_axis(out, picks, weights, axis=-1)
    return out


def test_sparsemixer_ops_equal_the_oracle_with_ties_and_near_ties():
    """The routing subgraph alone, on logits with exact ties, near-ties inside and outside the
    jitter window, all-zero rows and negative logits: the same experts and weights as the oracle."""
    experts, jitter = 6, 0.01
    rng = np.random.default_rng(15)
    rows = [rng.standard_normal((200, experts)).astype(np.float32) * 3]
    base = rng.standard_normal((60, experts)).astype(np.float32)
    near = base.copy()
    best = near.argmax(-1)
    second = (best + 1) % experts
    gap = np.abs(near[np.arange(60), best]) * np.linspace(0.0, 0.05, 60).astype(np.float32)  # 0 .. 2.5 windows
    near[np.arange(60), second] = near[np.arange(60), best] - gap
    rows += [near, np.zeros((3, experts), np.float32), -np.abs(base[:20]) - 1, np.full((2, experts), 0.5, np.float32)]
    logits = np.concatenate(rows)

    p = ops.parameter([-1, experts], ov.Type.f32)
    model = ov.Model([ops.result(sparsemixer(p, experts, jitter))], [p])
    got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(logits)[0]
    want = _dense(*oracle_sparsemixer(logits, jitter), experts)
    assert ((got > 0) == (want > 0)).all(), "a different pair of experts"
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert (want.sum(-1) < 1.999).sum() >= 10, "the near-ties must reach the shared-weight case"


def _moe_ops(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        counts[op.get_type_name()] = counts.get(op.get_type_name(), 0) + 1
    return counts


def test_ir_has_the_moe_blocks_in_standard_ops(export_tiny):
    """LayerNorm (MVN), one compressed constant per expert matrix, the router in f32, no data-dependent shapes."""
    out, result = export_tiny(VARIANT, "int4")
    model = ov.Core().read_model(out / "openvino_model.xml")
    spec = variant_spec(VARIANT)
    counts = _moe_ops(model)
    assert counts["MVN"] == 2 * spec.layers + 1
    assert counts.get("NonZero", 0) == 0 and counts.get("ScatterNDUpdate", 0) == 0
    assert counts["TopK"] == 2 * spec.layers
    consts = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Constant"}
    w1 = consts["model.layers.1.block_sparse_moe.experts.3.w1.weight"]
    assert w1.get_element_type() == ov.Type.u4 and list(w1.get_output_shape(0)) == [spec.intermediate, 256 // 128, 128]
    router = consts["model.layers.0.block_sparse_moe.gate.weight"]
    assert router.get_element_type() == ov.Type.f32 and list(router.get_output_shape(0)) == [spec.experts, spec.hidden]
    assert consts["lm_head.bias"].get_element_type() == ov.Type.f32
    per_tensor = result.details["per_tensor"]
    assert per_tensor["model.layers.0.block_sparse_moe.gate.weight"] == "fp32"
    assert per_tensor["model.layers.0.block_sparse_moe.experts.0.w2.weight"] == "int4_asym_g128"
    assert any("routers" in n for n in result.notes)


def test_fp32_matches_the_oracle(export_tiny):
    """fp32 in OpenVINO vs the plain PhiMoE oracle (transformers' PhimoeForCausalLM): KL <= 1e-6,
    on every prompt, the one past the original context (long factors) included."""
    out, _ = export_tiny(VARIANT, "fp32")
    model = OpenVINOModel(out, {})
    with open_model(cached_checkpoint(VARIANT)) as src:
        oracle = ReferenceModel.from_source(src)
    lengths = []
    for text in test_prompts(VARIANT):
        ids = model.tokenize(text)
        lengths.append(len(ids))
        report = compare_logits(oracle.logits(ids), model.logits(ids))
        assert report.kl_mean <= 1e-6 and report.top1_agreement == 1.0, (len(ids), report)
    assert max(lengths) > variant_spec(VARIANT).original_max_position
    model.close()


def test_routers_stay_float_through_every_plan():
    """ratio, policy and budget never put a router at an integer scheme; the hook agrees with export."""
    from phi_quant.model.tensors import TensorRole
    from phi_quant.types import ExportOptions
    from phi_quant_openvino import plugin
    from phi_quant_openvino.plan import plan_model

    with open_model(cached_checkpoint(VARIANT)) as src:
        infos = list(src.tensor_infos())
        routers = [i.name for i in infos if i.role is TensorRole.ROUTER]
        for options in (ExportOptions(precision="int4", extra={"ratio": 0.5}), ExportOptions(precision="int4", policy="q4_k_m"),
                        ExportOptions(precision="int8"), ExportOptions(precision="fp16")):
            plan = plan_model(src.config, infos, options, src)
            want = "fp16" if options.precision == "fp16" else "fp32"
            assert {plan.schemes[n].label for n in routers} == {want}, options
            if options.precision != "fp16":  # while the experts follow the integer plan
                assert all(s.is_int for n, s in plan.schemes.items() if ".experts." in n), options
        router = src.tensor(TensorRole.ROUTER, 1)
        assert plugin.quantize(tensor=router, options=ExportOptions(precision="int4")).scheme == "fp32"
        assert plugin.quantize(tensor=router, options=ExportOptions(precision="int4"), source=src).scheme == "fp32"
