"""The exported models run in OpenVINO: LLMPipeline generates, the stateful cache is exact, and
the logits equal the oracle's (fp32/fp16) or the oracle's on the dequantized weights (int8/int4).

Comparing compressed models with an oracle that uses the *dequantized* weights separates the two
questions: is the graph right (must match to ~1e-4), and how much does quantization cost (the
kit's fidelity check against the plain oracle, with the thresholds of docs/fidelity.md).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from phi_quant.model.source import open_model
from phi_quant.reference import ReferenceModel
from phi_quant.testing.factory import MOE_VARIANTS, VARIANTS, copy_checkpoint, variant_spec
from phi_quant.testing.prompts import test_prompts
from phi_quant_openvino.runtime import OpenVINOModel

PRECISIONS = ("fp32", "fp16", "int8", "int4")


def _ids(model: OpenVINOModel, variant: str) -> list[list[int]]:
    return [model.tokenize(p) for p in test_prompts(variant)]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("variant", VARIANTS + MOE_VARIANTS)
def test_logits_match_oracle_on_stored_weights(export_tiny, stored_oracle, variant, precision):
    out, result = export_tiny(variant, precision)
    model = OpenVINOModel(out, {})
    oracle = stored_oracle(variant, result)
    worst = 0.0
    for ids in _ids(model, variant):
        got, want = model.logits(ids), oracle.logits(ids)
        assert got.shape == want.shape and got.dtype == np.float32
        assert (got.argmax(-1) == want.argmax(-1)).all()
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst <= 1e-3, f"{variant}/{precision}: max |dlogit| {worst:.3g} vs the oracle on the stored weights"
    if variant_spec(variant).longrope:  # the long prompt really is past the original context
        assert len(_ids(model, variant)[-1]) > variant_spec(variant).original_max_position
    model.close()


@pytest.mark.parametrize("variant", VARIANTS + MOE_VARIANTS)
def test_stateful_cache_steps_equal_the_full_sequence(export_tiny, variant):
    out, _ = export_tiny(variant, "int4")
    model = OpenVINOModel(out, {})
    ids = model.tokenize(test_prompts(variant)[0])[:24]
    full = model.logits(ids)
    steps = model.step_logits(ids, [7, 1, 1, 1, len(ids) - 10])
    assert np.abs(steps - full).max() <= 1e-4
    model.close()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("variant", VARIANTS + MOE_VARIANTS)
def test_llm_pipeline_generates_the_oracles_greedy_tokens(export_tiny, stored_oracle, variant, precision):
    out, result = export_tiny(variant, precision)
    model = OpenVINOModel(out, {})
    prompt = model.tokenize(test_prompts(variant)[0])
    want = stored_oracle(variant, result).generate(prompt, 8)
    got = model.generate_ids(prompt, 8)
    n = min(len(got), len(want))
    assert n >= 1 and got[:n] == want[:n], f"{variant}/{precision}: LLMPipeline {got} vs oracle {want}"
    text = model.generate(test_prompts(variant)[0], max_new_tokens=8)
    assert isinstance(text, str)
    model.close()


@pytest.mark.parametrize("variant", ["phi4-mini", "phi3-mini", "phimoe"])
def test_paged_attention_conversion_agrees_with_sdpa(export_tiny, variant):
    """GenAI turns the IR into a paged-attention model (a scheduler config forces that path, with
    no silent fallback); it must generate what the stateful SDPA model generates (for PhiMoE too:
    the routing and the experts survive the conversion)."""
    import openvino_genai as og

    from phi_quant_openvino.runtime import compile_properties

    out, _ = export_tiny(variant, "int4")
    props = compile_properties({})
    scheduler = og.SchedulerConfig()
    scheduler.cache_size = 1
    texts = []
    for kw in ({"scheduler_config": scheduler}, {"ATTENTION_BACKEND": "SDPA"}):
        pipe = og.LLMPipeline(str(out), "CPU", **kw, **props)
        config = pipe.get_generation_config()
        config.max_new_tokens, config.do_sample, config.apply_chat_template = 10, False, False
        texts.append(str(pipe.generate("The sea is", config)))
    assert texts[0] == texts[1]


def test_chat_generation_uses_the_template(export_tiny):
    out, _ = export_tiny("phi4-mini", "fp16")
    model = OpenVINOModel(out, {})
    tokenizer = model.pipeline.get_tokenizer()
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert "hi" in rendered and rendered != "hi"
    assert isinstance(model.generate("hi", max_new_tokens=4, chat=True), str)


def test_sliding_window_is_applied(tmp_path):
    """A checkpoint with a short window: logits equal the oracle's, which masks by the window."""
    from phi_quant.types import ExportOptions, NullProgress
    from phi_quant_openvino.export import export_model

    src_dir = copy_checkpoint("phi3-mini", tmp_path / "ckpt", sliding_window=6)
    out = tmp_path / "out"
    out.mkdir()
    with open_model(src_dir) as src:
        export_model(src, out, ExportOptions(precision="fp32"), NullProgress())
        oracle = ReferenceModel.from_source(src)
    model = OpenVINOModel(out, {})
    ids = list(range(3, 40))
    assert np.abs(model.logits(ids) - oracle.logits(ids)).max() <= 1e-3
    full_attention = ReferenceModel(dataclasses.replace(oracle.config, sliding_window=None), oracle.w)
    assert np.abs(full_attention.logits(ids) - oracle.logits(ids)).max() > 1e-2  # the window matters here


def test_export_never_imports_torch(tmp_path):
    code = (
        "import sys\n"
        "from phi_quant.model.source import open_model\n"
        "from phi_quant.testing.factory import cached_checkpoint\n"
        "from phi_quant.types import ExportOptions, NullProgress\n"
        "from phi_quant_openvino.export import export_model\n"
        f"out = {str(tmp_path)!r}\n"
        "export_model(open_model(cached_checkpoint('phi4-mini')), __import__('pathlib').Path(out),"
        " ExportOptions(precision='int4'), NullProgress())\n"
        "print('TORCH', 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "TORCH False" in r.stdout, r.stdout
    assert (tmp_path / "openvino_tokenizer.xml").exists()


def test_optimum_intel_loads_the_export(export_tiny):
    """Where optimum-intel is installed (not in phi-quant's own test env: it pins older transformers)."""
    pytest.importorskip("optimum.intel")
    import torch
    from optimum.intel import OVModelForCausalLM

    out, _ = export_tiny("phi4-mini", "int4")
    props = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
    model = OVModelForCausalLM.from_pretrained(out, device="CPU", ov_config=props)
    ids = [5, 17, 33, 60, 2, 9, 100, 41]
    logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0]
    ours = OpenVINOModel(out, {}).logits(ids)
    assert np.abs(logits.numpy() - ours).max() <= 1e-5
