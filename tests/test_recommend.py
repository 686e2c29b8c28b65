"""recommend: different, justified answers per device class; refusal when a precision does not fit."""

from __future__ import annotations

import pytest

from phi_quant.errors import BadInputError
from phi_quant.model.config import normalize_config
from phi_quant.recommend import TARGETS, machine_profile, recommend
from phi_quant.sizing import GIB, conversion_memory_bytes, estimate_memory, largest_tensor_elements, weight_bytes

PHI35_MINI = dict(
    architectures=["Phi3ForCausalLM"], hidden_size=3072, num_attention_heads=32, num_key_value_heads=32,
    num_hidden_layers=32, intermediate_size=8192, vocab_size=32064, max_position_embeddings=131072,
    original_max_position_embeddings=4096, rms_norm_eps=1e-5,
    rope_scaling={"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48},
)


@pytest.fixture
def phi35():
    return normalize_config(PHI35_MINI)


def test_parameter_count_matches_published_phi35_mini(phi35):
    # microsoft/Phi-3.5-mini-instruct: 3,821,079,552 parameters
    assert phi35.parameter_count() == 3_821_079_552


def test_weight_sizes_follow_bits_per_weight(phi35):
    fp16 = weight_bytes(phi35, "fp16")
    assert 7.0 * GIB < fp16 < 7.3 * GIB
    assert weight_bytes(phi35, "fp32") == pytest.approx(2 * fp16, rel=1e-3)
    # Q4_0-like: 4 bits + an fp16 scale per 32 weights = 4.5 bits
    assert weight_bytes(phi35, "int4") == pytest.approx(fp16 * 4.5 / 16, rel=1e-3)


def test_a_conversion_asks_for_its_largest_tensor_not_the_model(phi35):
    # Phi-3.5-mini's largest tensor is the embedding, 32064 x 3072 (the fused gate_up is 2 x 8192 x 3072).
    assert largest_tensor_elements(phi35) == 32064 * 3072
    need = conversion_memory_bytes(phi35)
    assert need == 512 * 2**20 + 4 * 32064 * 3072
    assert need < weight_bytes(phi35, "int4") / 2  # streaming: far below even the int4 model


def test_iot_and_ai_pc_get_different_justified_answers(phi35):
    iot = recommend(phi35, TARGETS["iot"], model_name="phi35")
    pc = recommend(phi35, TARGETS["ai-pc"], model_name="phi35")
    assert iot.precision == "int4"
    assert pc.precision in ("fp16", "int8")
    assert (iot.backend, iot.precision) != (pc.backend, pc.precision)
    assert "INT4" in iot.reason and "needs about" in iot.reason
    assert "most faithful precision that fits" in pc.reason
    assert iot.memory.total <= iot.budget_bytes and pc.memory.total <= pc.budget_bytes


def test_forced_precision_that_does_not_fit_is_refused(phi35):
    with pytest.raises(BadInputError, match="fp16 does not fit"):
        recommend(phi35, TARGETS["iot"], precision="fp16")


def test_memory_override_changes_the_answer(phi35):
    small = recommend(phi35, TARGETS["ai-pc"], memory_bytes=8 * GIB)
    assert small.precision == "int4"
    with pytest.raises(BadInputError, match="even at int4"):
        recommend(phi35, TARGETS["ai-pc"], memory_bytes=2 * GIB)


def test_installed_backend_is_preferred_and_offers_are_respected(phi35):
    r = recommend(phi35, TARGETS["ai-pc"], installed_backends=["onnx"])
    assert r.backend == "onnx" and r.installed
    r = recommend(phi35, TARGETS["apple-silicon"], backend_precisions={"mlx": ["int4", "int8"]})
    assert (r.backend, r.precision) == ("llamacpp", "fp16")


def test_measured_fidelity_is_quoted(phi35):
    r = recommend(phi35, TARGETS["iot"], fidelity={("llamacpp", "int4"): 0.0123})
    assert "measured mean KL vs fp32 0.012" in r.reason


def test_machine_profile_uses_detected_hardware(phi35):
    p = machine_profile(64 * GIB, nvidia_vram=24 * GIB)
    assert p.memory_bytes == 24 * GIB and p.backends[0] == "onnx"
    assert machine_profile(16 * GIB, apple_silicon=True).backends[0] == "mlx"
    assert estimate_memory(phi35, "int4", 1024).kv_cache * 4 == estimate_memory(phi35, "int4", 4096).kv_cache


def test_cli_recommend_iot_vs_ai_pc_and_refusal():
    import json

    from click.testing import CliRunner

    from phi_quant.cli import cli

    runner = CliRunner()
    iot = runner.invoke(cli, ["recommend", "tiny:phi4-mini", "--target", "iot", "--json"])
    pc = runner.invoke(cli, ["recommend", "tiny:phi4-mini", "--target", "ai-pc", "--json"])
    assert iot.exit_code == 0 and pc.exit_code == 0, iot.output + pc.output
    iot_r, pc_r = json.loads(iot.output), json.loads(pc.output)
    assert iot_r["precision"] == "int4" and pc_r["precision"] == "fp16"
    assert iot_r["reason"] != pc_r["reason"] and "-o tiny-phi4-mini-llamacpp-int4" in iot_r["command"]
    refused = runner.invoke(cli, ["recommend", "tiny:phi4-mini", "--target", "iot", "--precision", "fp16",
                                  "--memory", "0.1"])
    assert refused.exit_code == 2 and "fp16 does not fit" in refused.output


PHI35_MOE = dict(
    architectures=["PhiMoEForCausalLM"], hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
    num_hidden_layers=32, intermediate_size=6400, vocab_size=32064, max_position_embeddings=131072,
    num_local_experts=16, num_experts_per_tok=2, attention_bias=True, lm_head_bias=True,
)


def test_a_mixture_of_experts_needs_memory_for_every_expert():
    """Phi-3.5-MoE: the fit is decided by all 41.9 B parameters, and the answer says so; speed by 6.6 B."""
    moe = normalize_config(PHI35_MOE)
    int4 = estimate_memory(moe, "int4", 4096)
    assert int4.weights == weight_bytes(moe, "int4") > 21 * GIB  # every expert is resident
    with pytest.raises(BadInputError, match=r"even at int4.*all 16 experts \(41\.9 B parameters\) must be in memory"):
        recommend(moe, TARGETS["ai-pc"], model_name="phi35moe")
    rec = recommend(moe, TARGETS["ai-pc"], memory_bytes=64 * GIB, model_name="phi35moe")
    assert rec.precision == "int4" and rec.memory.weights == int4.weights
    assert "only 6.6 B of them" in rec.reason and "mixture of experts" in rec.reason
    dense = recommend(normalize_config(PHI35_MINI), TARGETS["ai-pc"], model_name="phi35")
    assert "mixture of experts" not in dense.reason


def test_cli_inspect_and_doctor_show_total_and_active_parameters(manager, npy_backend):
    import json

    from click.testing import CliRunner

    from phi_quant.cli import cli

    data = json.loads(CliRunner().invoke(cli, ["inspect", "tiny:phimoe", "--json"]).stdout)
    assert (data["arch"], data["dims"]["num_experts"], data["dims"]["experts_per_token"]) == ("phimoe", 4, 2)
    assert data["active_parameters"] < data["parameters"]
    assert all(s["active_weights_bytes"] < s["weights_bytes"] for s in data["estimated_sizes"])
    assert data["backends"]["npy"] == {"error": "does not write phimoe (writes phi3)"}
    text = CliRunner().invoke(cli, ["inspect", "tiny:phimoe"]).stdout
    assert "active per token" in text and "4 experts (2 per token)" in text and "read per token" in text
    assert "LayerNorm with bias" in text and "sparsemixer" in text
    doctor = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).stdout)
    moe = [r for r in doctor["fits"] if r["model"] == "Phi-3.5-MoE"]
    assert moe and all(r["arch"] == "phimoe" and not r["writes"] and not r["fits"] for r in moe)
    assert any("41.9 B parameters, 6.6 B active per token" in n for n in doctor["notes"])
    text = CliRunner().invoke(cli, ["doctor"]).stdout
    assert "- (writes no phimoe)" in text and "note: Phi-3.5-MoE: 41.9 B parameters" in text
