"""End-to-end conversion with the fake ``npy`` backend: atomic output, manifest, model card,
``run`` and ``eval`` through the CLI, and ``inspect`` on every tiny variant."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from phi_quant.cli import cli
from phi_quant.convert import convert
from phi_quant.errors import OutputExistsError, PluginError, UnsupportedModelError, UnsupportedPrecisionError
from phi_quant.manifest import file_sha256, read_manifest
from phi_quant.progress import RecordingProgress
from phi_quant.testing.factory import VARIANTS, cached_checkpoint
from phi_quant.types import ExportOptions


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def leftovers(parent: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def tiny() -> Path:
    return Path(cached_checkpoint("phi4-mini"))


def test_hook_export_writes_manifest_card_and_moves_atomically(manager, npy_backend, tiny, tmp_path):
    out = tmp_path / "nested" / "out"
    progress = RecordingProgress()
    res = convert(tiny, "npy", ExportOptions("int8", extra={"note": 3}), out, progress=progress)
    assert res.output == out and res.scheme == "int8-row" and out.is_dir()
    assert leftovers(out.parent, {"out"}) == [], "temporary directory left behind"
    # the backend streamed every tensor and reported the bytes it consumed
    assert progress.done == progress.total > 0 and progress.finished
    assert len(list((out / "weights").glob("*.npz"))) == len(progress.items)
    m = read_manifest(out)
    assert m["backend"]["name"] == "npy" and m["precision"] == "int8" and m["scheme"] == "int8-row"
    assert m["options"]["extra"] == {"note": 3}
    assert m["source"]["files"]["config.json"]["sha256"] == file_sha256(tiny / "config.json")
    assert "tokenizer.json" in m["source"]["files"]
    assert m["source"]["weights_bytes"] == progress.total
    assert m["source"]["hub_id"] is None
    assert m["tools"]["python"] and m["tools"]["phi-quant"]
    assert set(m["timings"]) == {"open_s", "export_s", "total_s"}
    assert m["notes"] == ["norms stay float32"]
    card = (out / "README.md").read_text()
    assert "int8" in card and "int8-row" in card and "norms stay float32" in card
    assert f"phi-quant run {out.name}" in card and "import numpy as np" in card
    assert set(res.files) >= {"phi-quant.json", "README.md", "config.json"}


@pytest.mark.parametrize("interrupt", [False, True], ids=["exception", "ctrl-c"])
def test_failure_mid_export_leaves_nothing(manager, fakes, tiny, tmp_path, interrupt):
    backend = fakes["NpyBackend"]("broken", fail_after=3, interrupt=interrupt)
    manager.register(backend, "broken")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt if interrupt else PluginError):
        convert(tiny, "broken", ExportOptions("fp32"), out)
    assert backend.exported_to and not backend.exported_to[0].exists()
    assert leftovers(tmp_path, set()) == []


def test_cli_failure_mid_export_is_one_line_and_leaves_nothing(manager, fakes, tiny, tmp_path):
    manager.register(fakes["NpyBackend"]("broken", fail_after=2), "broken")
    res = invoke("quantize", tiny, "-b", "broken", "-p", "fp32", "-o", tmp_path / "out")
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        "Error: plugin 'broken': export failed: RuntimeError: injected failure in the middle of export"
    ]
    assert leftovers(tmp_path, set()) == []


def test_force_keeps_the_old_output_until_the_new_one_is_complete(manager, npy_backend, fakes, tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError):
        convert(tiny, "npy", ExportOptions("fp32"), out)
    manager.register(fakes["NpyBackend"]("broken", fail_after=1), "broken")
    with pytest.raises(PluginError):
        convert(tiny, "broken", ExportOptions("fp32"), out, force=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    convert(tiny, "npy", ExportOptions("fp32"), out, force=True)
    assert not (out / "old.txt").exists() and (out / "phi-quant.json").is_file()
    assert leftovers(tmp_path, {"out"}) == []


def test_backend_refusal_passes_through_as_bad_input(manager, npy_backend, tiny, tmp_path):
    # the fake refuses int4 inside quantize(); check_options stops it even earlier
    with pytest.raises(UnsupportedPrecisionError, match="offers: fp32, int8"):
        convert(tiny, "npy", ExportOptions("int4"), tmp_path / "o")
    assert leftovers(tmp_path, set()) == []


def test_hook_load_model_quantize_run_eval_through_the_cli(manager, npy_backend, tiny, tmp_path):
    results = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        res = invoke("quantize", tiny, "-b", "npy", "-p", precision, "-o", out, "--json")
        assert res.exit_code == 0, res.output
        q = json.loads(res.stdout)
        assert q["scheme"] == ("f32" if precision == "fp32" else "int8-row") and q["output_bytes"] > 0
        res = invoke("run", out, "--prompt", "Hello world", "--max-tokens", "4", "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["backend"] == "npy"
        res = invoke("eval", out, "--reference", tiny, "--json", "--max-text-tokens", "64", "--gen-tokens", "4")
        assert res.exit_code == 0, res.output
        results[precision] = json.loads(res.stdout)
    f32, i8 = results["fp32"]["fidelity"], results["int8"]["fidelity"]
    # an fp32 copy run by the same oracle is exact; int8 per-row is close but not exact
    assert f32["kl_mean"] < 1e-9 and f32["top1_agreement"] == 1.0 and f32["max_abs_diff"] < 1e-4
    assert f32["perplexity"] == pytest.approx(f32["reference_perplexity"], rel=1e-5)
    assert 0 < i8["kl_mean"] < 0.05 and i8["top1_agreement"] > 0.8
    assert results["int8"]["size_bytes"] < results["fp32"]["size_bytes"]
    speed = results["int8"]["speed"]
    assert speed["load_seconds"] > 0 and speed["prompt_tokens_per_s"] > 0
    assert results["int8"]["memory"]["peak_rss_bytes"] > 10 * 1024**2


def test_eval_scores_perplexity_in_windows_and_records_the_text(manager, npy_backend, tiny, tmp_path):
    out = tmp_path / "fp32"
    assert invoke("quantize", tiny, "-b", "npy", "-p", "fp32", "-o", out, "--json").exit_code == 0
    res = invoke("eval", out, "--reference", tiny, "--json", "--max-text-tokens", "64", "--window", "32",
                 "--gen-tokens", "2")
    assert res.exit_code == 0, res.output
    f = json.loads(res.stdout)["fidelity"]
    t = f["text"]
    assert (t["tokens"], t["window"], t["windows"], t["scored_tokens"]) == (64, 32, 2, 62)
    assert t["name"] == "bundled" and t["files"][0]["path"].endswith("eval_text.txt")
    assert f["perplexity"] == pytest.approx(f["reference_perplexity"], rel=1e-5)
    # KL and top-1 at every scored position of the text too (an fp32 copy: exact)
    assert f["text_positions"] == 64 and f["text_kl_mean"] < 1e-9 and f["text_top1_agreement"] == 1.0
    assert "answers" not in json.loads(res.stdout)  # tiny models: no chat questions unless asked
    mine = tmp_path / "mine.txt"
    mine.write_text("A short text of my own, with enough words to score a few tokens of it.\n", encoding="utf-8")
    res = invoke("eval", out, "--reference", tiny, "--text", mine, "--gen-tokens", "2")
    assert res.exit_code == 0, res.output
    assert f"of {mine} (sha256 {file_sha256(mine)[:12]}), 1 window(s)" in res.stdout


def test_eval_answers_the_chat_questions_like_the_oracle(manager, npy_backend, tiny, tmp_path):
    """--answers: each question in the chat template, greedy in the runtime and in the oracle, compared."""
    from phi_quant.answers import QUESTIONS

    results = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        assert invoke("quantize", tiny, "-b", "npy", "-p", precision, "-o", out, "--json").exit_code == 0
        res = invoke("eval", out, "--reference", tiny, "--json", "--answers", "--max-text-tokens", "16",
                     "--gen-tokens", "2")
        assert res.exit_code == 0, res.output
        results[precision] = json.loads(res.stdout)["answers"]
    exact = results["fp32"]
    assert (exact["agree"], exact["of"]) == (len(QUESTIONS), len(QUESTIONS))  # the same computation as the oracle
    assert [i["question"] for i in exact["items"]] == list(QUESTIONS) and all(i["model"] for i in exact["items"])
    assert all(i["same"] == (i["model"] == i["oracle"]) for i in results["int8"]["items"])
    res = invoke("eval", tmp_path / "int8", "--reference", tiny, "--answers", "--max-text-tokens", "16", "--gen-tokens", "2")
    assert res.exit_code == 0 and f"answers: {results['int8']['agree']} of 5 the same as the oracle's" in res.stdout


EXPECTED_QUIRKS = {
    "phi3-mini": (["rope theta 10000"], ["grouped-query", "LongRoPE", "partial rotary", "tied"]),
    "phi3.5-longrope": (["LongRoPE"], ["grouped-query", "partial rotary", "tied"]),
    "phi4": (["grouped-query", "rope theta 250000"], ["LongRoPE", "partial rotary", "tied"]),
    "phi4-mini": (["grouped-query", "partial rotary", "LongRoPE", "tied embeddings"], []),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_inspect_each_tiny_variant_shows_its_quirks(manager, npy_backend, variant):
    present, absent = EXPECTED_QUIRKS[variant]
    res = invoke("inspect", f"tiny:{variant}", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    quirks = " | ".join(data["quirks"])
    for q in present:
        assert q in quirks, (variant, quirks)
    for q in absent:
        assert q not in quirks, (variant, quirks)
    sizes = {(s["precision"], s["group_size"]): s["weights_bytes"] for s in data["estimated_sizes"]}
    assert sizes[("fp32", None)] > sizes[("fp16", None)] > sizes[("int8", 32)] > sizes[("int4", 32)] > sizes[("int4", 128)]
    assert data["backends"] == {"npy": {"fp32": "f32", "int8": "int8-row"}}
    text = invoke("inspect", f"tiny:{variant}")
    assert text.exit_code == 0 and all(q in text.stdout for q in present)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "LlamaForCausalLM"),
        ({"architectures": ["Phi3SmallForCausalLM"], "model_type": "phi3small"}, "block-sparse"),
    ],
    ids=["llama", "phi3-small"],
)
def test_inspect_refuses_other_architectures(tiny, tmp_path, patch, message):
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(patch)
    (model / "config.json").write_text(json.dumps(cfg))
    res = invoke("inspect", model)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


def test_npy_fake_matches_the_oracle_at_fp32(tiny, tmp_path, manager, npy_backend):
    """The fake backend used above is itself honest: its fp32 output reproduces the oracle."""
    from phi_quant.model.source import open_model
    from phi_quant.reference import ReferenceModel

    out = tmp_path / "o"
    convert(tiny, "npy", ExportOptions("fp32"), out)
    model = manager.get("npy").load_model(out)
    with open_model(tiny) as src:
        ref = ReferenceModel.from_source(src)
        ids = src.hf_tokenizer().encode("The quick brown fox", add_special_tokens=False).ids
        np.testing.assert_allclose(model.logits(ids), ref.logits(ids), rtol=0, atol=1e-5)
    model.close()


def test_eval_refuses_the_wrong_reference_and_warns_about_a_changed_one(manager, npy_backend, tiny, tmp_path):
    out = tmp_path / "out"
    convert(tiny, "npy", ExportOptions("fp32"), out)
    res = invoke("eval", out, "--reference", "tiny:phi3-mini")
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --reference tiny:phi3-mini has"), lines
    changed = tmp_path / "changed"
    shutil.copytree(tiny, changed)
    cfg = json.loads((changed / "config.json").read_text())
    cfg["comment"] = "edited after conversion"
    (changed / "config.json").write_text(json.dumps(cfg))
    res = invoke("eval", out, "--reference", changed, "--json", "--max-text-tokens", "16", "--gen-tokens", "2")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["warnings"] == ["config.json of the reference differs from the one npy output was made from"]


def _other_arch_backend(fakes, declared):
    """The npy fake under another name, declaring that it writes only ``declared``."""
    import dataclasses

    from phi_quant.hookspecs import hookimpl

    class Other(fakes["NpyBackend"]):
        @hookimpl
        def backend_info(self):
            return dataclasses.replace(super().backend_info(), architectures=declared)

    return Other("otherarch")


def test_undeclared_architecture_is_refused_before_export(manager, npy_backend, fakes, tiny, tmp_path):
    other = _other_arch_backend(fakes, ("phimoe",))
    manager.register(other, "otherarch")
    try:
        assert manager.get("otherarch").info.architectures == ("phimoe",)
        with pytest.raises(UnsupportedModelError) as e:
            convert(tiny, "otherarch", ExportOptions("fp32"), tmp_path / "out")
        assert str(e.value) == ("backend 'otherarch' does not write architecture phi3 (Phi3ForCausalLM); "
                                "it writes: phimoe; backends that write it: npy")
        assert other.exported_to == [] and leftovers(tmp_path, set()) == []
        res = invoke("quantize", tiny, "-b", "otherarch", "-p", "fp32", "-o", tmp_path / "out")
        assert res.exit_code == 2 and res.output.count("\n") == 1 and "does not write architecture phi3" in res.output
        data = json.loads(invoke("inspect", tiny, "--json").stdout)
        assert data["arch"] == "phi3" and data["active_parameters"] == data["parameters"]
        assert data["backends"]["otherarch"] == {"error": "does not write phi3 (writes phimoe)"}
        assert data["backends"]["npy"] == {"fp32": "f32", "int8": "int8-row"}
        assert data["backend_architectures"] == {"npy": ["phi3"], "otherarch": ["phimoe"]}
        assert "otherarch  does not write phi3 (writes phimoe)" in invoke("inspect", tiny).stdout
    finally:
        manager.unregister("otherarch")


@pytest.mark.parametrize("backend", ["llamacpp", "onnx", "openvino", "mlx"])
def test_installed_backends_write_phimoe_or_refuse_it_before_any_work(backend, tmp_path):
    """Every vendor backend writes PhiMoE now (its kit runs on the tiny PhiMoE, so this skips); one
    that stops declaring it is refused with one line naming the backends that do, before export
    runs and with nothing left behind."""
    from phi_quant.errors import BackendNotInstalledError
    from phi_quant.plugins import get_manager

    try:
        found = get_manager().get(backend)
    except BackendNotInstalledError:
        pytest.skip(f"{backend} is not installed")
    if found.info.writes("phimoe"):
        pytest.skip(f"{backend} writes phimoe: its conformance kit runs on the tiny PhiMoE")
    with pytest.raises(UnsupportedModelError) as e:
        convert("tiny:phimoe", backend, ExportOptions("fp16"), tmp_path / "out")
    assert str(e.value).startswith(f"backend '{backend}' does not write architecture phimoe (PhiMoEForCausalLM); "
                                   f"it writes: phi3")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
