"""PhiMoE in mlx-lm's ``phimoe`` layout: stacked SwitchGLU experts bit-identical to ``mx.quantize``
of the stacked source weights, config.json that ``mlx_lm.load`` builds the model from, mlx-lm's
routing equal to sparsemixer, fp32 equal to the oracle, the LongRoPE context choice, refusals.
(Every precision against the declared thresholds, atomic output, NaN refusal and the streaming
check on 8- and 16-expert checkpoints are the conformance kit's, run in test_conformance.py.)"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from phi_quant.errors import UnsupportedModelError
from phi_quant.fidelity import compare_logits
from phi_quant.model.tensors import TensorRole
from phi_quant_mlx import plugin
from phi_quant_mlx.constants import PHIMOE_EXPERT_MODULES

mx = pytest.importorskip("mlx.core")

VARIANT = "phimoe"


def _source_array(tensor):
    raw = np.ascontiguousarray(tensor.raw())
    if tensor.dtype == "bf16":
        return mx.array(raw.view(np.uint16)).view(mx.bfloat16)
    return mx.array(raw)


def _bits(a):
    if a.dtype in (mx.bfloat16, mx.float16):
        a = a.view(mx.uint16)
    elif a.dtype == mx.float32:
        a = a.view(mx.uint32)
    return np.array(a)


def _load_all(directory):
    weights = {}
    for f in sorted(directory.glob("model*.safetensors")):
        weights.update(mx.load(str(f)))
    return weights


def _stacked_sources(source):
    """(module, parameter) -> the source tensor, or the list of expert tensors stacked in mlx-lm's order."""
    from phi_quant_mlx.constants import parameter_path

    out: dict[tuple[str, str], object] = {}
    for t in source.tensors():
        key = parameter_path(t.role, t.layer, t.expert)
        if t.expert is None:
            out[key] = t
        else:
            out.setdefault(key, []).append(t)
    return out


def test_config_and_names_are_mlx_lm_phimoe(exported, sources):
    cfg = sources(VARIANT).config
    out, res = exported(VARIANT, "int4")
    written = json.loads((out / "config.json").read_text())
    assert (written["model_type"], written["num_local_experts"], written["num_experts_per_tok"]) == ("phimoe", 4, 2)
    assert written["router_jitter_noise"] == cfg.router_jitter and written["rms_norm_eps"] == cfg.rms_norm_eps
    scaling = written["rope_scaling"]
    assert (scaling["short_mscale"], scaling["long_mscale"]) == (cfg.rope.mscale(False), cfg.rope.mscale(True))
    names = set(_load_all(out))
    assert not any(".experts." in n for n in names), "per-expert tensors must be stacked"
    for layer in range(cfg.num_layers):
        for module in PHIMOE_EXPERT_MODULES.values():
            assert {f"model.layers.{layer}.{module}.{k}" for k in ("weight", "scales", "biases")} <= names
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert f"model.layers.{layer}.self_attn.{p}.bias" in names
        assert f"model.layers.{layer}.input_layernorm.bias" in names
        assert f"model.layers.{layer}.block_sparse_moe.gate.scales" in names  # mlx-lm convert quantizes the router
    assert {"lm_head.bias", "model.norm.bias"} <= names
    # one count per stacked module (not per expert): embed, lm_head and per layer q, k, v, o, router, 3 experts
    assert res.details["quantized_modules"] == {"int4-g64": 2 + 8 * cfg.num_layers}


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_stacked_experts_equal_mx_quantize(precision, exported, sources):
    """Each SwitchLinear equals ``mx.quantize`` of the stacked [experts, out, in] source weights, as
    ``mlx_lm.convert`` computes it; every other tensor equals mx.quantize or the source bits."""
    out, _ = exported(VARIANT, precision)
    bits = {"int4": 4, "int8": 8}[precision]
    weights = _load_all(out)
    stacked = 0
    for (module, param), src in _stacked_sources(sources(VARIANT)).items():
        tensors = src if isinstance(src, list) else [src]
        source = mx.stack([_source_array(t) for t in tensors]) if isinstance(src, list) else _source_array(src)
        if isinstance(src, list):
            assert [t.expert for t in src] == list(range(len(src)))
            stacked += 1
        if not tensors[0].role.is_matmul:  # norms and biases: the source's bits
            assert param == "bias" or f"{module}.scales" not in weights
            assert np.array_equal(_bits(weights[f"{module}.{param}"]), _bits(source)), f"{module}.{param}"
            continue
        want = mx.quantize(source, group_size=64, bits=bits)
        for suffix, expected in zip(("weight", "scales", "biases"), want):
            got = weights[f"{module}.{suffix}"]
            assert got.dtype == expected.dtype and got.shape == expected.shape, f"{module}.{suffix}"
            assert np.array_equal(_bits(got), _bits(expected)), f"{module}.{suffix} differs from mx.quantize"
    assert stacked == 3 * sources(VARIANT).config.num_layers


def test_mlx_lm_routing_is_sparsemixer():
    """mlx-lm's phimoe routes with sparsemixer's eval-mode path: the same experts and weights as
    the oracle's (transformers'), near-ties included."""
    from mlx_lm.models.phimoe import sparsemixer as mlx_sparsemixer

    from phi_quant.arch.oracle import sparsemixer

    rng = np.random.default_rng(7)
    logits = rng.normal(size=(512, 16)).astype(np.float32)
    logits[::4, 3] = logits[::4].max(axis=-1) * (1 - 1e-3)  # near-ties with the best (within 2 * jitter)
    logits[1::4, 5] = logits[1::4, 3] = 2.5  # exact ties
    logits[2::8] = 0.0  # all-zero rows
    want_e, want_w = sparsemixer(logits, 0.01)
    inds, scores = mlx_sparsemixer(mx.array(logits), top_k=2, jitter_eps=0.01)
    assert np.array_equal(np.array(inds), want_e)
    np.testing.assert_allclose(np.array(scores), want_w, rtol=1e-6, atol=1e-7)
    assert (want_w < 1).any() and (want_w == 1).any()  # both regimes were exercised


def test_fp32_equals_oracle_in_mlx_lm(exported, prompt_ids, oracle_logits, reference):
    """Tiny PhiMoE fp32 in mlx-lm: KL <= 1e-6 against the oracle on every prompt (short and long),
    top-1 identical; and mlx-lm's cached greedy loop yields the oracle's greedy tokens."""
    from mlx_lm import stream_generate

    out, _ = exported(VARIANT, "fp32")
    model = plugin.load_model(path=out, options={})
    try:
        for ids, ref in zip(prompt_ids(VARIANT), oracle_logits(VARIANT)):
            r = compare_logits(ref, model.logits(ids))
            assert r.kl_max <= 1e-6 and r.top1_agreement == 1.0, f"{len(ids)} tokens: {r}"
        ids = prompt_ids(VARIANT)[0]
        model._prepare(len(ids) + 8)
        got = [int(t.token) for t in stream_generate(model.model, model.tokenizer, ids, max_tokens=8,
                                                     logits_processors=[model.mask_padding])]
        n, eos = model.tokenizer_size, set(model.tokenizer.eos_token_ids)
    finally:
        model.close()
    ref, want = reference(VARIANT), []
    while len(want) < 8:
        want.append(int(np.argmax(ref.logits(list(ids) + want)[-1, :n])))
        if want[-1] in eos:
            break
    assert got == want


def test_context_length_writes_short_factors_and_mscale(exported, sources, prompt_ids, oracle_logits):
    """Plain mlx-lm applies long_factor/long_mscale at every length; ``--context-length`` within the
    original context writes the short ones there, and plain ``mlx_lm.load`` is then exact on short prompts."""
    cfg = sources(VARIANT).config
    orig = cfg.rope.original_max_position
    out, _ = exported(VARIANT, "fp32", context_length=orig)
    written = json.loads((out / "config.json").read_text())
    assert written["rope_scaling"]["long_factor"] == list(cfg.rope.short_factor)
    assert written["rope_scaling"]["long_mscale"] == cfg.rope.mscale(False)
    assert written["phi_quant"]["original_long_factor"] == list(cfg.rope.long_factor)
    pairs = [(i, r) for i, r in zip(prompt_ids(VARIANT), oracle_logits(VARIANT)) if len(i) <= orig]
    model = plugin.load_model(path=out, options={"longrope": "config"})
    try:
        r = compare_logits(np.concatenate([r for _, r in pairs]), np.concatenate([model.logits(i) for i, _ in pairs]))
    finally:
        model.close()
    assert r.kl_max <= 1e-6 and r.top1_agreement == 1.0


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: {"tie_word_embeddings": True}, "no tied output layer"),
        (lambda c: {"head_dim": 32}, "head_dim"),
        (lambda c: {"rope": dataclasses.replace(c.rope, rotary_dim=32)}, "rotates every head dimension"),
    ],
)
def test_what_mlx_lm_phimoe_cannot_express_is_refused(change, match, sources, tmp_path):
    from phi_quant.types import ExportOptions, NullProgress

    source = sources(VARIANT)
    cfg = dataclasses.replace(source.config, **change(source.config))
    with pytest.raises(UnsupportedModelError, match=match):
        plugin.export(source=_WithConfig(source, cfg), output_dir=tmp_path, options=ExportOptions("fp16"),
                      progress=NullProgress())
    assert list(tmp_path.iterdir()) == []


class _WithConfig:
    """A source whose parsed config is replaced, and whose stream leaves out the ``drop`` roles."""

    def __init__(self, source, config, drop=()):
        self._source, self.config, self._drop = source, config, tuple(drop)

    def __getattr__(self, name):
        return getattr(self._source, name)

    def tensor_infos(self, split=False):
        return [i for i in self._source.tensor_infos(split) if i.role not in self._drop]

    def tensors(self, split=False):
        return (t for t in self._source.tensors(split) if t.role not in self._drop)


def test_phimoe_without_biases_gets_exact_zero_biases(sources, prompt_ids, tmp_path):
    """mlx-lm's phimoe Linears all carry a bias: a PhiMoE without q/k/v/o and lm_head biases is
    written with zero ones and still equals the oracle (which adds none)."""
    from phi_quant.arch.phimoe import PhiMoEReference
    from phi_quant.types import ExportOptions, NullProgress

    source = sources(VARIANT)
    cfg = dataclasses.replace(source.config, attention_bias=False, lm_head_bias=False)
    drop = (TensorRole.Q_BIAS, TensorRole.K_BIAS, TensorRole.V_BIAS, TensorRole.O_BIAS, TensorRole.LM_HEAD_BIAS)
    view = _WithConfig(source, cfg, drop)
    plugin.export(source=view, output_dir=tmp_path, options=ExportOptions("fp32"), progress=NullProgress())
    zeros = _load_all(tmp_path)
    assert not np.array(zeros["model.layers.1.self_attn.k_proj.bias"]).any() and not np.array(zeros["lm_head.bias"]).any()
    ref = PhiMoEReference(cfg, {t.name: t.to_float32() for t in view.tensors()})
    model = plugin.load_model(path=tmp_path, options={})
    try:
        for ids in prompt_ids(VARIANT)[:2]:
            r = compare_logits(ref.logits(ids), model.logits(ids))
            assert r.kl_max <= 1e-6 and r.top1_agreement == 1.0, r
    finally:
        model.close()


def test_quantize_hook_returns_an_expert_slice(sources, exported):
    from phi_quant.types import ExportOptions

    out, _ = exported(VARIANT, "int4")
    weights = _load_all(out)
    tensor = next(t for t in sources(VARIANT).tensors() if t.role == TensorRole.DOWN and t.expert == 2 and t.layer == 1)
    qt = plugin.quantize(tensor=tensor, options=ExportOptions("int4"))
    assert qt.name == "model.layers.1.block_sparse_moe.switch_mlp.down_proj.weight" and qt.meta["expert"] == 2
    for key in ("weight", "scales", "biases"):
        got = _bits(weights[f"model.layers.1.block_sparse_moe.switch_mlp.down_proj.{key}"][2])
        assert np.array_equal(got, np.ascontiguousarray(qt.arrays[key]).view(got.dtype)), key


def test_size_budget_gives_each_stacked_module_one_scheme(sources):
    """``--bits-per-weight`` chooses per tensor; an mlx-lm SwitchLinear holds one bits/group for all
    its experts, so the plan gives every expert of a module the same (the largest chosen)."""
    from phi_quant.types import ExportOptions
    from phi_quant_mlx.plan import plan_model

    src = sources(VARIANT)
    plan = plan_model(src.config, src.tensor_infos(), ExportOptions("int4", bits_per_weight=5.5), src)
    per_module: dict[str, set] = {}
    for p in plan:
        if p.experts:
            per_module.setdefault(p.module, set()).add(p.quant)
    assert len(per_module) == 3 * src.config.num_layers and all(len(q) == 1 for q in per_module.values())
    assert {q.bits for p in plan if p.quant is not None for q in [p.quant]} == {4, 8}  # the budget did mix
