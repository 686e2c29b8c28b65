"""Every tiny variant x precision: exported, loaded by onnxruntime-genai on CPU, compared with the oracle.

Logits come from onnxruntime-genai itself (one ``og.Generator`` step over the whole prompt; the
graph returns every position). Thresholds are the plugin's, taken from docs/fidelity.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from phi_quant.fidelity import compare_logits
from phi_quant.testing.factory import VARIANTS

from phi_quant_onnx import plugin

from .conftest import PRECISIONS


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_runs_in_genai_and_matches_oracle(variant, precision, exported, oracle):
    out, result = exported(variant, precision)
    ref, rows = oracle(variant)
    th = plugin.THRESHOLDS[precision]
    model = plugin.load_model(path=out, options={})
    try:
        kls, top1, worst, n = [], 0.0, 0.0, 0
        for prompt, ids, ref_logits in rows:
            assert model.tokenize(prompt) == list(ids), f"genai tokenizes {prompt!r} differently from Hugging Face"
            got = model.logits(ids)
            assert got.shape == ref_logits.shape and got.dtype == np.float32
            r = compare_logits(ref_logits, got)
            kls.append(r.kl_mean * r.positions)
            top1 += r.top1_agreement * r.positions
            n += r.positions
            worst = max(worst, r.max_abs_diff)
        kl = sum(kls) / n
        summary = f"{variant} {precision}: KL {kl:.3g}, top-1 {top1 / n:.4f}, max|dlogit| {worst:.3g}"
        assert kl <= th.kl_max, summary
        assert top1 / n >= th.top1_min, summary
        if th.max_abs_logit is not None:
            assert worst <= th.max_abs_logit, summary

        # Greedy generation by genai (KV cache in use): for fp32, exactly the oracle's tokens.
        prompt, ids, _ = rows[0]
        new = model.generate_ids(ids, max_new_tokens=6)
        assert 1 <= len(new) <= 6
        if precision == "fp32":
            assert new == ref.generate(ids, max_new_tokens=6, eos_ids=model.eos_ids), summary
        text = model.generate(prompt, max_new_tokens=4)
        assert isinstance(text, str)
    finally:
        model.close()


@pytest.mark.parametrize("variant", ["phi3.5-longrope", "phi4-mini"])
def test_longrope_prompts_cover_both_caches(variant, sources, oracle):
    """The shared prompts (compared above) include ones below and one past the original context."""
    rope = sources(variant).config.rope
    assert rope.is_longrope
    lengths = [len(ids) for _, ids, _ in oracle(variant)[1]]
    assert min(lengths) <= rope.original_max_position < max(lengths)


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_quantized_graph_equals_oracle_on_dequantized_weights(variant, precision, sources, exported, oracle):
    """With accuracy_level 0 (no activation quantization) the MatMulNBits / GatherBlockQuantized
    graph must compute exactly what the oracle computes on the weights our quantize hook dequantizes:
    this checks packing, shapes and tied sharing far tighter than the end-to-end KL bound."""
    from phi_quant.reference import ReferenceModel
    from phi_quant.types import ExportOptions

    src = sources(variant)
    tied = src.config.tie_word_embeddings
    hook_options = ExportOptions(precision=precision, extra={"embeddings": precision if tied else "fp16"})
    weights = {t.name: plugin.quantize(tensor=t, options=hook_options).dequantize() for t in src.tensors()}
    deq = ReferenceModel(src.config, weights)
    out, result = exported(variant, precision, accuracy_level=0)
    assert result.details["embeddings"] == (precision if tied else "fp16")
    model = plugin.load_model(path=out, options={})
    try:
        for _, ids, _ in oracle(variant)[1]:
            want, got = deq.logits(ids), model.logits(ids)
            assert np.abs(want - got).max() <= 1e-3
            assert (want.argmax(-1) == got.argmax(-1)).all()
    finally:
        model.close()
