"""Size budgets and named policies through every backend's plan, on a tiny tied checkpoint.

``--bits-per-weight X`` must never exceed X (the allocator spends at most the budget) and must
buy more than the cheapest plan when X allows it; ``--policy q4_k_m`` must give the tied
embedding (the output matrix) more bits than the other matrices, in each format's own means.
The real model's sizes (within 2 % of X) and KL are measured in docs/fidelity.md.
"""

from __future__ import annotations

import json

import pytest

from phi_quant.convert import convert
from phi_quant.errors import BadInputError, UnsupportedPrecisionError
from phi_quant.options import check_options
from phi_quant.plugins import get_manager
from phi_quant.types import BackendInfo, ExportOptions, PrecisionSpec

BACKENDS = [b for b in ("llamacpp", "onnx", "openvino", "mlx") if b in get_manager().names()]
MODEL = "tiny:phi4-mini"


def _quant(tmp_path, backend: str, **kw) -> dict:
    out = tmp_path / f"{backend}-{'-'.join(f'{k}{v}' for k, v in kw.items())}"
    convert(MODEL, backend, ExportOptions(precision="int4", **kw), out)
    return json.loads((out / "phi-quant.json").read_text())["quantization"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_budget_stays_within_the_asked_bits_and_uses_them(tmp_path, backend):
    base = _quant(tmp_path, backend)
    target = round(base["bits_per_weight"] + 1.0, 2)
    got = _quant(tmp_path, backend, bits_per_weight=target)
    assert got["bits_per_weight"] <= target * 1.0001
    assert got["bits_per_weight"] > base["bits_per_weight"]
    reasons = {t.get("reason", "") for t in got["tensors"]}
    assert any(r.startswith("--bits-per-weight") for r in reasons)
    assert sum(t["bytes"] for t in got["tensors"]) == got["tensor_bytes"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_q4_k_m_policy_gives_the_output_matrix_more_bits(tmp_path, backend):
    got = _quant(tmp_path, backend, policy="q4_k_m")
    by_name = {t["name"]: t for t in got["tensors"]}
    embed = by_name["model.embed_tokens.weight"]
    gate_up = by_name["model.layers.0.mlp.gate_up_proj.weight"]
    assert embed["bits_per_weight"] > gate_up["bits_per_weight"] + 1, (embed, gate_up)


def test_budget_and_policy_refusals(tmp_path):
    backend = BACKENDS[0]
    with pytest.raises(BadInputError, match="between"):
        convert(MODEL, backend, ExportOptions(precision="int4", bits_per_weight=1.0), tmp_path / "a")
    with pytest.raises(BadInputError, match="drop --policy"):
        convert(MODEL, backend, ExportOptions(precision="int4", bits_per_weight=5.0, policy="q4_k_m"), tmp_path / "b")
    with pytest.raises(BadInputError, match="unknown policy"):
        convert(MODEL, backend, ExportOptions(precision="int4", policy="q9"), tmp_path / "c")
    with pytest.raises(UnsupportedPrecisionError, match="ask for more bits per weight"):
        convert(MODEL, backend, ExportOptions(precision="int4", bits_per_weight=2.0), tmp_path / "d")
    assert not any(tmp_path.iterdir())  # nothing left behind


class _OldBackend:
    """A plugin built for contract 1.2: it knows nothing of recipes or budgets."""

    name = "old"
    info = BackendInfo(name="old", format="f", runtime="r", hook_contract="1.2")

    def precision(self, precision: str) -> PrecisionSpec:
        return PrecisionSpec(precision, "x")


@pytest.mark.parametrize("field,value,flag", [("recipe", "clip", "--recipe"), ("bits_per_weight", 5.0, "--bits-per-weight"),
                                              ("policy", "q4_k_m", "--policy")])
def test_a_plugin_older_than_contract_1_3_is_not_given_recipes_or_budgets(field, value, flag):
    with pytest.raises(UnsupportedPrecisionError, match=f"hook contract 1.2, before {flag}"):
        check_options(_OldBackend(), ExportOptions(precision="int4", **{field: value}))
    assert check_options(_OldBackend(), ExportOptions(precision="int4", recipe="rtn")).recipe == "rtn"
