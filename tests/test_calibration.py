"""Calibration (phi_quant.calib) and the calibrated recipes: statistics, the exact AWQ fold, GPTQ, names, cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from phi_quant.arch.oracle import ReferenceModel, rms_norm
from phi_quant.arch.roles import TensorRole
from phi_quant.calib import calibrated_source, calibration_statistics, request_from_options
from phi_quant.calib.awq import Consumer, fake_quant, search_fold
from phi_quant.calib.stats import Point
from phi_quant.errors import BadInputError, UnsupportedPrecisionError
from phi_quant.model.source import open_model
from phi_quant.plugins import get_manager
from phi_quant.quant.plan import recipe_context
from phi_quant.quant.recipes import get_recipe
from phi_quant.quant.recipes.gptq import gptq_factor, gptq_values
from phi_quant.quant.recipes.rtn import RTN
from phi_quant.quant.scheme import Scheme
from phi_quant.quant.values import dequantize_values, pack, rtn_values
from phi_quant.testing.factory import cached_checkpoint
from phi_quant.types import ExportOptions

#: Small and quick: one window of 64 tokens, four AWQ grid points.
FAST = dict(calibration_tokens=64)


def _options(recipe: str, **kw) -> ExportOptions:
    return ExportOptions(precision="int4", recipe=recipe, **{**FAST, **kw})


@pytest.fixture(scope="module")
def reference_backend():
    return get_manager().get("reference")


@pytest.mark.parametrize("variant", ["phi3-mini", "phi4-mini"])  # phi4-mini: grouped-query attention, tied
def test_awq_fold_leaves_the_fp32_model_unchanged(variant, reference_backend):
    with open_model(cached_checkpoint(variant, "f32")) as src:
        folded = calibrated_source(src, reference_backend, _options("awq:grid=4"))
        scales = [s for ls in folded._scales.values() for _, s in ls.folds]
        assert scales and max(float(np.abs(np.log(s)).max()) for s in scales) > 0.05  # the scales are not all 1
        changed = [t.name for t in folded.tensors() if t.dtype == "f32" and not np.array_equal(
            t.to_float32(), src.tensor(t.role, t.layer).to_float32())]
        assert any("input_layernorm" in n for n in changed) and any("o_proj" in n for n in changed)
        ids = list(range(3, 70))
        want = ReferenceModel.from_source(src).logits(ids)
        got = ReferenceModel.from_source(folded).logits(ids)
    assert np.abs(got - want).max() < 1e-4


def test_statistics_are_those_of_the_oracle(reference_backend, tmp_path):
    """Layer 0's qkv input is the attention norm of the embedding rows; the lm_head input is the
    oracle's final hidden state: both recomputed here without the calibration pass."""
    with open_model(cached_checkpoint("phi3-mini", "f32")) as src:
        request = dataclasses.replace(request_from_options(_options("gptq")), cache=tmp_path / "s.safetensors")
        stats = calibration_statistics(src, request)
        ids = request.sequences(src.hf_tokenizer())[0]
        ref = ReferenceModel.from_source(src)
        c = src.config
        h0 = rms_norm(ref.w["model.embed_tokens.weight"][ids], ref.w["model.layers.0.input_layernorm.weight"], c.rms_norm_eps)
        final = ref.hidden_states(ids)
        for point, x in ((Point(0, "qkv"), h0), (Point(None, "lm_head"), final)):
            st = stats.get(point)
            assert st.count == len(ids)
            np.testing.assert_allclose(st.mean_sq, (x.astype(np.float64) ** 2).mean(0), rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(st.mean_abs, np.abs(x).mean(0), rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(st.xtx(), x.T.astype(np.float64) @ x / len(ids), rtol=1e-3, atol=1e-5)
        assert stats.meta["tokens"] == len(ids) and stats.meta["text"]["sha256"] == request.text.sha256


def test_cache_is_reused_and_refuses_other_calibrations(reference_backend, tmp_path, monkeypatch):
    cache = tmp_path / "stats.safetensors"
    with open_model(cached_checkpoint("phi3-mini", "bf16")) as src:
        first = calibration_statistics(src, request_from_options(_options("gptq", calibration_cache=str(cache))))
        assert cache.is_file()
        from phi_quant.calib import prepare

        monkeypatch.setattr(prepare, "collect_statistics", lambda *a, **k: pytest.fail("recomputed a cached calibration"))
        again = calibration_statistics(src, request_from_options(_options("gptq", calibration_cache=str(cache))))
        assert again.key == first.key
        other = request_from_options(_options("gptq", calibration_cache=str(cache), calibration_tokens=48))
        with pytest.raises(BadInputError, match="tokens 64"):
            calibration_statistics(src, other)


@pytest.mark.parametrize("scheme", [Scheme.ggml("Q4_0"), Scheme.ggml("Q4_1"), Scheme.ggml("Q8_0"),
                                    Scheme.matmulnbits(4, 32, True), Scheme.matmulnbits(4, 64, False, "f16"),
                                    Scheme.mlx(4, 64, "f16"), Scheme.nncf(4, True, 64), Scheme.nncf(8, False, None)],
                         ids=lambda s: s.name)
def test_gptq_lowers_the_output_error_in_every_kernel_layout(scheme):
    rng = np.random.default_rng(1)
    n, k = 48, 128
    mix = rng.standard_normal((k, k)).astype(np.float32) * 0.3 + np.eye(k, dtype=np.float32)
    x = rng.standard_normal((512, k)).astype(np.float32) @ mix  # correlated channels, as real activations
    h = x.T @ x / len(x)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05

    def err(v):
        d = dequantize_values(v, scheme) - w
        return float(np.einsum("ij,jk,ik->", d, h, d))

    for act_order in (False, True):
        v = gptq_values(w, scheme, gptq_factor(h, 0.01, act_order), RTN())
        lo, hi = scheme.code_range()
        assert v.codes.min() >= lo and v.codes.max() <= hi
        assert err(v) < 0.9 * err(rtn_values(w, scheme))
        pack(v, scheme)  # the kernel stores them


def test_awq_search_never_scores_worse_than_plain_rounding():
    from phi_quant.arch.base import ScaleFold

    rng = np.random.default_rng(2)
    k = 64
    x = rng.standard_normal((256, k)).astype(np.float32) * np.linspace(0.1, 8, k, dtype=np.float32)
    w = rng.standard_normal((96, k)).astype(np.float32)
    scheme = Scheme.ggml("Q4_0")
    fold = ScaleFold("attn_in", 0, TensorRole.ATTN_NORM, None, ((TensorRole.QKV, None),), k)
    s, report = search_fold(fold, [Consumer(w, scheme, x.T @ x / len(x), np.abs(x).mean(0))], grid=10)
    assert report["error_awq"] <= report["error_rtn"] and report["ratio"] < 0.95  # outlier channels: AWQ helps
    assert np.isclose(np.sqrt(s.max() * s.min()), 1.0, rtol=1e-4)
    q = fake_quant(w * s, scheme) / s
    d = q - w
    assert np.isclose(float(np.vdot(d @ (x.T @ x / len(x)), d)), report["error_awq"], rtol=1e-3)  # K <= 128: exact


def test_error_sketch_keeps_the_diagonal_and_the_big_directions():
    from phi_quant.calib.awq import error_sketch

    rng = np.random.default_rng(3)
    k = 1500  # above 1024: the randomized range finder
    x = rng.standard_normal((2000, k)).astype(np.float32) * np.where(np.arange(k) < 8, 30.0, 1.0).astype(np.float32)
    h = x.T @ x / len(x)
    b, d = error_sketch(h)
    np.testing.assert_allclose(np.einsum("ij,ij->i", b, b) + d, np.diagonal(h), rtol=1e-3)
    delta = rng.standard_normal((16, k)).astype(np.float32)
    exact = float(np.vdot(delta @ h, delta))
    approx = float(np.vdot(delta @ b, delta @ b)) + float(np.vdot(delta * delta, np.broadcast_to(d, delta.shape)))
    assert abs(approx - exact) < 0.05 * exact


@pytest.mark.parametrize("name,canonical", [("awq", "awq"), ("gptq", "gptq"), ("gptq+awq", "awq+gptq"),
                                            ("awq+clip", "awq+clip"), ("clip+gptq", "gptq+clip"),
                                            ("awq+gptq+hqq", "awq+gptq+hqq"), ("gptq:act_order=false", "gptq")])
def test_recipe_names_combine(name, canonical):
    assert get_recipe(name).name == canonical


@pytest.mark.parametrize("name,message", [("clip+hqq", "two value rules"), ("awq+awq", "twice"), ("awq+", "empty"),
                                          ("gptq:alpha=1", "act_order"), ("clip:x=1", "no parameters"),
                                          ("bogus", "unknown recipe part")])
def test_bad_recipe_names_say_what_is_wrong(name, message):
    with pytest.raises(BadInputError, match=message):
        get_recipe(name)


def test_calibrated_recipe_without_calibration_is_refused():
    with open_model(cached_checkpoint("phi3-mini", "bf16")) as src:
        info = src.tensor_infos()[1]
        with pytest.raises(UnsupportedPrecisionError, match="calibration statistics"):
            recipe_context(get_recipe("gptq"), info, src)


def test_hook_tensor_plan_is_the_plan_export_records(reference_backend, tmp_path):
    from phi_quant.convert import convert

    options = _options("awq+gptq")
    result = convert(cached_checkpoint("phi3-mini"), "reference", options, tmp_path / "out")
    with open_model(cached_checkpoint("phi3-mini")) as src:
        plan = reference_backend.tensor_plan(src, options)
    written = {t["name"]: t["scheme"] for t in result.manifest["quantization"]["tensors"]}
    assert {p.name: p.scheme.name for p in plan} == written
    calib = result.manifest["calibration"]
    assert calib["statistics"]["tokens"] == 64 and calib["statistics"]["text"]["name"] == "calibration"
    assert calib["recipe"]["name"] == "awq+gptq" and calib["awq"]["folds"] > 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Calibration" in card and calib["statistics"]["text"]["sha256"][:12] in card


def test_round_to_nearest_never_calibrates(tmp_path, monkeypatch):
    """rtn (the default) streams the checkpoint itself: no statistics, no wrapped source, the same bytes."""
    from phi_quant.calib import prepare
    from phi_quant.convert import convert

    def refuse(*a, **k):
        raise AssertionError("round to nearest must not calibrate")

    monkeypatch.setattr(prepare, "calibration_statistics", refuse)
    path = cached_checkpoint("phi3-mini")
    plain = convert(path, "reference", ExportOptions(precision="int4"), tmp_path / "plain")
    convert(path, "reference", ExportOptions(precision="int4", recipe="rtn"), tmp_path / "rtn")
    assert "calibration" not in plain.manifest and "calibrate_s" not in plain.manifest["timings"]
    model = [f for f in plain.files if f not in ("phi-quant.json", "README.md")]
    assert model and all((tmp_path / "plain" / f).read_bytes() == (tmp_path / "rtn" / f).read_bytes() for f in model)


def test_a_calibrated_recipe_on_phimoe_is_one_line_before_any_output(tmp_path):
    """PhiMoE has no calibration forward yet (arch.calibrates is False): awq/gptq are refused with
    the data-free recipes named, and nothing is left next to the output."""
    from phi_quant.convert import convert

    writers = [b for b in get_manager().backends() if b.info.writes("phimoe")]
    if not writers:
        pytest.skip("no installed backend writes phimoe")
    with pytest.raises(UnsupportedPrecisionError, match=r"does not do yet for phimoe .*rtn, clip, hqq"):
        convert("tiny:phimoe", writers[0].name, ExportOptions("int4", recipe="awq"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("k", [40, 700])  # 700: several blocks of the triangular inverse
def test_gptq_factor_is_the_cholesky_factor_of_the_inverse(k):
    """The factor from one Cholesky and a triangular inverse equals numpy's chol(H⁻¹), computed the
    direct way (inverse, then Cholesky), in GPTQ's processing order."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3 * k, k)) * np.linspace(0.2, 3, k)
    h = (x.T @ x / len(x)).astype(np.float32)
    order, u, dead = gptq_factor(h, 0.01, True)
    assert not dead.any() and list(order) == list(np.argsort(-np.diagonal(h).astype(np.float64), kind="stable"))
    hp = h.astype(np.float64)[np.ix_(order, order)]
    hp[np.arange(k), np.arange(k)] += 0.01 * np.mean(np.diagonal(hp))
    expected = np.linalg.cholesky(np.linalg.inv(hp)).T
    np.testing.assert_allclose(u, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert np.allclose(np.tril(u, -1), 0)


def test_synthetic_calibration_draws_ordinary_tokens_most_common_first():
    """``--calibration synthetic``: seeded ids from the vocabulary's ordinary tokens (never an added or
    byte-fallback token), low ranks (BPE merge order) far more often than high ones, keyed apart from texts."""
    from phi_quant.calib.synthetic import SYNTHETIC, SyntheticText

    with open_model(cached_checkpoint("phi3-mini")) as src:
        tok = src.hf_tokenizer()
        request = request_from_options(_options("gptq", calibration=SYNTHETIC, calibration_tokens=4000))
        assert isinstance(request.text, SyntheticText) and request.text.record()["name"] == "synthetic"
        seqs = request.sequences(tok)
        assert [len(s) for s in seqs] == [512] * 7 + [4000 - 7 * 512]
        ids = np.concatenate(seqs)
        assert request.sequences(tok) == seqs  # seeded: the same draw every time
        added = set(tok.get_added_tokens_decoder())
        pieces = [tok.id_to_token(int(i)) for i in ids]
        assert not added & set(ids.tolist()) and not any(p.startswith("<0x") and p.endswith(">") for p in pieces)
        ordinary = sorted(i for t, i in tok.get_vocab(with_added_tokens=False).items()
                          if i not in added and not (t.startswith("<0x") and t.endswith(">")))
        mid = ordinary[len(ordinary) // 2]
        assert (ids < mid).sum() > 2 * (ids >= mid).sum()
        plain = request_from_options(_options("gptq"))
        assert request.key({"sha256": "m"}, 4000) != plain.key({"sha256": "m"}, 4000)


def test_synthetic_calibration_from_the_cli_records_no_text(tmp_path):
    """The CLI takes the word (a file must exist otherwise); the manifest and card say no text was used."""
    import json

    from click.testing import CliRunner

    from phi_quant.cli import cli

    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["quantize", str(cached_checkpoint("phi3-mini")), "-b", "reference", "-p", "int4",
                                    "--recipe", "gptq", "--calibration", "synthetic", "--calibration-tokens", "64",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "calibrated on 64 synthetic token ids (no text; sha256 " in res.output
    manifest = json.loads((out / "phi-quant.json").read_text())
    text = manifest["calibration"]["statistics"]["text"]
    assert text["name"] == "synthetic" and text["files"] == []
    assert "synthetic token ids, no text" in (out / "README.md").read_text()
    bad = CliRunner().invoke(cli, ["quantize", str(cached_checkpoint("phi3-mini")), "-b", "reference", "-p", "int4",
                                    "--recipe", "gptq", "--calibration", str(tmp_path / "synthetic-typo"),
                                    "-o", str(tmp_path / "o2")])
    assert bad.exit_code != 0 and "does not exist" in bad.output
