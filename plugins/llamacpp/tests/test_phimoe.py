"""PhiMoE as a llama.cpp ``phimoe`` GGUF: header, stacked expert bytes, and what llama.cpp computes.

Two claims are held apart. With ``phimoe_weights=as-is`` (the checkpoint's values, as
llama.cpp's converter writes them) llama.cpp computes :class:`LlamaCppPhiMoEReference`, RMSNorm
and softmax-renormalised routing, exactly: the file is right and the runtime's definition is not
the model's. With the default ``faithful`` weights it computes the model exactly but for
routing near-ties (:class:`FaithfulPhiMoEReference`), and the oracle within the measured bounds.
"""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np
import pytest

from phi_quant.errors import UnsupportedModelError, UnsupportedPrecisionError
from phi_quant.fidelity import compare_logits
from phi_quant.model.tensors import TensorRole
from phi_quant.types import ExportOptions, NullProgress
from phi_quant_llamacpp import plugin
from phi_quant_llamacpp.constants import PRECISION_SCHEMES, GGMLType, Key, arch_key
from phi_quant_llamacpp.ggml_lib import ggml_quantize
from phi_quant_llamacpp.phimoe import (
    EXPERT_SCALE,
    ROUTER_SCALE,
    FaithfulPhiMoEReference,
    LlamaCppPhiMoEReference,
    check_supported,
)

VARIANT = "phimoe"
SCHEMES = [(p, s) for p, (d, o) in PRECISION_SCHEMES.items() for s in (d, *o)]


@pytest.fixture(scope="module")
def as_is(sources, tmp_path_factory):
    """The fp32 export with the checkpoint's own values."""
    out = tmp_path_factory.mktemp("phimoe-as-is")
    res = plugin.export(source=sources(VARIANT), output_dir=out, progress=NullProgress(),
                        options=ExportOptions(precision="fp32", extra={"phimoe_weights": "as-is"}))
    return out, res


def _weights(src):
    return {t.name: t.to_float32() for t in src.tensors()}


def _against(model, reference, prompt_ids):
    reports = [compare_logits(reference.logits(ids), model.logits(ids)) for _, ids in prompt_ids(VARIANT)]
    n = sum(r.positions for r in reports)
    return (sum(r.kl_mean * r.positions for r in reports) / n, sum(r.top1_agreement * r.positions for r in reports) / n,
            max(r.max_abs_diff for r in reports))


def test_header_and_stacked_tensors(sources, exported):
    """phimoe keys (expert counts, the short mscale as attn_factor) and llama.cpp's tensor table."""
    cfg = sources(VARIANT).config
    out, res = exported(VARIANT, "int4", "Q4_0")
    r = gguf.GGUFReader(str(out / res.files[0]))
    f = lambda k: r.fields[arch_key(k, "phimoe")].contents()  # noqa: E731
    assert r.fields[Key.ARCHITECTURE].contents() == "phimoe"
    assert (f(Key.EXPERT_COUNT), f(Key.EXPERT_USED_COUNT)) == (4, 2)
    assert f(Key.FEED_FORWARD_LENGTH) == cfg.intermediate_size and f(Key.HEAD_COUNT_KV) == cfg.num_kv_heads
    assert f(Key.ROPE_ATTN_FACTOR) == pytest.approx(cfg.rope.short_mscale, rel=1e-6)
    assert f(Key.ROPE_ORIG_CONTEXT) == cfg.rope.original_max_position
    t = {x.name: x for x in r.tensors}
    h, i, e = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts
    ggml_shapes = {"blk.1.ffn_gate_exps.weight": [h, i, e], "blk.1.ffn_up_exps.weight": [h, i, e],
                   "blk.1.ffn_down_exps.weight": [i, h, e], "blk.1.ffn_gate_inp.weight": [h, e],
                   "blk.1.attn_q.weight": [h, cfg.q_size], "blk.1.attn_k.bias": [cfg.kv_size],
                   "blk.1.attn_norm.bias": [h], "output.bias": [cfg.vocab_size], "output_norm.bias": [h]}
    for name, shape in ggml_shapes.items():
        assert list(t[name].shape) == shape, name
    assert t["blk.0.ffn_gate_inp.weight"].tensor_type.name == "F32" and t["blk.0.ffn_up_exps.weight"].tensor_type.name == "Q4_0"
    assert not any("attn_qkv" in n or ".ffn_up.weight" in n for n in t)
    assert len(t) == 2 + 1 + 2 + 2 + cfg.num_layers * 16  # rope factors, embedding, output norm + bias, output + bias
    assert any("rewritten so llama.cpp" in n for n in res.notes)


@pytest.mark.parametrize("weights", ["as-is", "faithful"])
def test_each_expert_is_its_slice_of_the_stack(weights, sources, tmp_path):
    """Q8_0 bytes of slice e of each ``*_exps`` tensor equal ggml's quantization of expert e alone
    (rewritten for ``faithful``: w2 centred over its rows and doubled), written without gathering."""
    src = sources(VARIANT)
    res = plugin.export(source=src, output_dir=tmp_path, progress=NullProgress(),
                        options=ExportOptions(precision="int8", extra={"phimoe_weights": weights}))
    t = {x.name: x for x in gguf.GGUFReader(str(tmp_path / res.files[0])).tensors}
    checked = 0
    for tensor in src.tensors():
        if tensor.expert is None:
            continue
        w = tensor.to_float32()
        if weights == "faithful" and tensor.role is TensorRole.DOWN:
            mean = (w.sum(axis=0, dtype=np.float64) / w.shape[0]).astype(np.float32)  # as the writer computes it
            w = (w - mean) * np.float32(EXPERT_SCALE)
        name = {TensorRole.GATE: "ffn_gate_exps", TensorRole.UP: "ffn_up_exps", TensorRole.DOWN: "ffn_down_exps"}
        stack = np.asarray(t[f"blk.{tensor.layer}.{name[tensor.role]}.weight"].data).view(np.uint8)
        got = stack.reshape(src.config.num_experts, w.shape[0], -1)[tensor.expert]
        np.testing.assert_array_equal(got, ggml_quantize(w, GGMLType.Q8_0), err_msg=tensor.name)
        checked += 1
    assert checked == 3 * src.config.num_experts * src.config.num_layers
    router = np.asarray(t["blk.0.ffn_gate_inp.weight"].data, dtype=np.float32)
    scale = ROUTER_SCALE if weights == "faithful" else 1.0
    np.testing.assert_array_equal(router, src.tensor(TensorRole.ROUTER, 0).to_float32() * np.float32(scale))


def test_as_is_weights_run_as_llamacpp_defines_phimoe(sources, as_is, prompt_ids):
    """The checkpoint's values in llama.cpp = RMSNorm + shift and softmax-renormalised top-2, exactly;
    that is far from the model (if llama.cpp changes its phimoe graph, this test says so)."""
    src = sources(VARIANT)
    out, _ = as_is
    w = _weights(src)
    with plugin.load_model(path=out, options={}) as model:
        kl, top1, diff = _against(model, LlamaCppPhiMoEReference(src.config, w), prompt_ids)
        assert kl <= 1e-9 and top1 == 1.0 and diff <= 1e-3, (kl, top1, diff)
        kl_model, *_ = _against(model, FaithfulPhiMoEReference(src.config, w), prompt_ids)
    assert kl_model > 0.5, kl_model


def test_faithful_weights_compute_the_model_but_for_near_ties(sources, exported, prompt_ids, measured):
    """The default rewrite makes llama.cpp compute PhiMoE: exact where the router has no near-tie."""
    src = sources(VARIANT)
    out, _ = exported(VARIANT, "fp32", "F32")
    with plugin.load_model(path=out, options={}) as model:
        kl, top1, diff = _against(model, FaithfulPhiMoEReference(src.config, _weights(src)), prompt_ids)
    assert kl <= 1e-6 and top1 == 1.0, (kl, top1, diff)
    report, ctx = measured(VARIANT, "fp32", "F32")
    assert report.kl_mean < 0.1 and report.top1_agreement > 0.93, report  # the near-ties' share (docs/fidelity.md)
    assert [long for n, _, long in ctx] == [n > src.config.rope.original_max_position for n, _, _ in ctx]


@pytest.mark.parametrize("precision,scheme", SCHEMES)
def test_fidelity_against_the_oracle(precision, scheme, measured):
    """Every scheme, K-quants through llama_model_quantize included, within the measured PhiMoE bounds."""
    report, _ = measured(VARIANT, precision, scheme)
    limits = plugin.PHIMOE_SCHEME_THRESHOLDS[scheme]
    assert report.kl_mean <= limits.kl_max and report.top1_agreement >= limits.top1_min, report


def test_stacking_reads_one_expert_at_a_time(sources, tmp_path, monkeypatch):
    """Every write into a stacked tensor is at most one expert's rows: the stack is never gathered."""
    from phi_quant_llamacpp import export as export_module

    sizes: dict[str, list[int]] = {}
    real = export_module.GGUFStreamWriter.write

    def write(self, name, chunk):
        sizes.setdefault(name, []).append(np.asarray(chunk).nbytes)
        return real(self, name, chunk)

    monkeypatch.setattr(export_module.GGUFStreamWriter, "write", write)
    src = sources(VARIANT)
    plugin.export(source=src, output_dir=tmp_path, options=ExportOptions(precision="fp16"), progress=NullProgress())
    one_expert = src.config.intermediate_size * src.config.hidden_size * 2
    stacked = {n: s for n, s in sizes.items() if "_exps" in n}
    assert len(stacked) == 3 * src.config.num_layers
    assert all(len(s) >= src.config.num_experts and max(s) <= one_expert for s in stacked.values()), stacked


def test_refusals(sources, tmp_path):
    src = sources(VARIANT)
    with pytest.raises(UnsupportedPrecisionError, match="phimoe_weights='exact'"):
        plugin.export(source=src, output_dir=tmp_path, progress=NullProgress(),
                      options=ExportOptions(precision="fp16", extra={"phimoe_weights": "exact"}))
    cfg = src.config
    with pytest.raises(UnsupportedModelError, match="attention_bias=false"):
        check_supported(dataclasses.replace(cfg, attention_bias=False))
    with pytest.raises(UnsupportedModelError, match="own output.weight"):
        check_supported(dataclasses.replace(cfg, tie_word_embeddings=True))
    assert not list(tmp_path.iterdir())
