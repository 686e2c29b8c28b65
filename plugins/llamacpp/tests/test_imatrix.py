"""A calibrated GGUF export: its imatrix.gguf is llama.cpp's importance-matrix format holding the
calibration statistics, and the output still loads as one model."""

from __future__ import annotations

import numpy as np
import pytest

from phi_quant.calib import calibration_statistics, request_from_options
from phi_quant.convert import convert
from phi_quant.model.source import open_model
from phi_quant.plugins import get_manager
from phi_quant.testing.factory import cached_checkpoint
from phi_quant.types import ExportOptions

gguf = pytest.importorskip("gguf")


def test_calibrated_export_writes_llama_cpps_imatrix_and_still_loads(tmp_path):
    path = cached_checkpoint("phi4-mini", "f32")  # tied embedding: the output matmul is token_embd
    options = ExportOptions(precision="int4", recipe="gptq", calibration_tokens=64,
                            calibration_cache=tmp_path / "stats.safetensors")
    res = convert(path, "llamacpp", options, tmp_path / "out")
    assert "imatrix.gguf" in res.files
    model = gguf.GGUFReader(str(next(p for p in (tmp_path / "out").glob("*.gguf") if p.name != "imatrix.gguf")))
    weights = {t.name: [int(d) for d in t.shape] for t in model.tensors}
    reader = gguf.GGUFReader(str(tmp_path / "out" / "imatrix.gguf"))
    field = reader.fields["general.type"]
    assert bytes(field.parts[field.data[0]]).decode() == "imatrix"
    assert {"imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"} <= set(reader.fields)
    tensors = {t.name: t for t in reader.tensors}
    names = {n.rsplit(".", 1)[0] for n in tensors}
    assert {n + suffix for n in names for suffix in (".in_sum2", ".counts")} == set(tensors)
    assert "token_embd.weight" in names and "output.weight" not in names
    assert {f"blk.0.{w}.weight" for w in ("attn_qkv", "attn_output", "ffn_up", "ffn_down")} <= names
    with open_model(path) as src:
        stats = calibration_statistics(src, request_from_options(options))
        tokens = stats.meta["tokens"]
        for name in names:
            sums = np.asarray(tensors[name + ".in_sum2"].data, np.float64).ravel()
            assert sums.shape[0] == weights[name][0], name  # one value per input channel of the matmul
            assert float(np.asarray(tensors[name + ".counts"].data).ravel()[0]) == tokens
        down = next(s for s in stats if s.point.layer == 0 and s.point.role == "down")
        np.testing.assert_allclose(np.asarray(tensors["blk.0.ffn_down.weight.in_sum2"].data).ravel() / tokens,
                                   down.mean_sq, rtol=1e-5)
    loaded = get_manager().get("llamacpp").load_model(tmp_path / "out", {})  # imatrix.gguf is not a second model
    try:
        assert np.isfinite(loaded.logits([1, 2, 3])).all()
    finally:
        loaded.close()


def test_k_quants_take_the_calibrated_importance_through_llama_model_quantize(tmp_path):
    """--scheme Q4_K_M --recipe awq: the scaled model goes to llama.cpp's own quantizer with the
    calibrated mean x² as its importance matrix (a C array of llama_model_imatrix_data)."""
    path = cached_checkpoint("phi3-mini", "f32")
    options = ExportOptions(precision="int4", scheme="Q4_K_M", recipe="awq", calibration_tokens=64)
    res = convert(path, "llamacpp", options, tmp_path / "out")
    assert "imatrix.gguf" in res.files and res.manifest["calibration"]["recipe"]["name"] == "awq"
    model = gguf.GGUFReader(str(next(p for p in (tmp_path / "out").glob("*.gguf") if p.name != "imatrix.gguf")))
    kinds = {t.tensor_type.name for t in model.tensors if len(t.shape) == 2}
    assert kinds & {"Q4_K", "Q6_K", "Q5_K"}, kinds
    loaded = get_manager().get("llamacpp").load_model(tmp_path / "out", {})
    try:
        assert np.isfinite(loaded.logits([1, 2, 3, 4])).all()
    finally:
        loaded.close()
