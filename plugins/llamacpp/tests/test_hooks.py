"""The hooks as the core sees them: discovery by entry point, reports, refusals, atomic export."""

from __future__ import annotations

import numpy as np
import pytest

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.types import ExportOptions, NullProgress
from phi_quant_llamacpp import plugin
from phi_quant_llamacpp.constants import GGMLType
from phi_quant_llamacpp.ggml_lib import ggml_quantize


def test_entry_point_is_registered():
    from importlib.metadata import entry_points

    eps = {e.name: e for e in entry_points(group="phi_quant")}
    assert eps["llamacpp"].load() is plugin


def test_reports():
    info = plugin.backend_info()
    assert (info.name, info.format, info.distribution) == ("llamacpp", "GGUF", "phi-quant-llamacpp")
    hw = plugin.detect_hardware()
    assert hw.available and hw.devices[0]["type"] == "cpu" and "system_info" in hw.details
    assert isinstance(hw.details["supports_gpu_offload"], bool)
    specs = {s.precision: s for s in plugin.supported_precisions()}
    assert specs["int4"].scheme == "Q4_0" and "Q4_K_M" in specs["int4"].schemes
    assert all(s.thresholds is not None for s in specs.values())


def test_refusals(sources, tmp_path):
    src = sources("phi4-mini")
    with pytest.raises(UnsupportedPrecisionError, match="belongs to --precision int4"):
        plugin.export(source=src, output_dir=tmp_path, options=ExportOptions(precision="int8", scheme="Q4_K_M"), progress=NullProgress())
    with pytest.raises(UnsupportedPrecisionError, match="matched no tensor"):
        plugin.export(source=src, output_dir=tmp_path, options=ExportOptions(precision="int4", extra={"tensor_types": "nonexistent=Q8_0"}), progress=NullProgress())
    with pytest.raises(UnsupportedPrecisionError, match="llama.cpp's own mix"):
        plugin.export(source=src, output_dir=tmp_path, options=ExportOptions(precision="int4", scheme="Q4_K_M", policy="q4_k_m"), progress=NullProgress())
    with pytest.raises(UnsupportedPrecisionError, match="chooses its own values"):
        plugin.export(source=src, output_dir=tmp_path, options=ExportOptions(precision="int4", scheme="Q4_K_M", recipe="clip"), progress=NullProgress())
    assert not list(tmp_path.iterdir())


def test_per_tensor_override(sources, tmp_path):
    import gguf

    src = sources("phi3-mini")
    opts = ExportOptions(precision="int4", extra={"tensor_types": "token_embd=Q8_0,output=F16"})
    (tmp_path / "a").mkdir()
    res = plugin.export(source=src, output_dir=tmp_path / "a", options=opts, progress=NullProgress())
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "a" / res.files[0])).tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["output.weight"] == "F16" and types["blk.0.attn_qkv.weight"] == "Q4_0"
    assert types["blk.1.attn_output.weight"] == "Q4_0", "a bare name matches exactly, not as a substring"
    (tmp_path / "k").mkdir()  # a type our kernel does not write: made by ggml's quantizer in the same pass
    opts = ExportOptions(precision="int4", extra={"tensor_types": "output=Q6_K"})
    res = plugin.export(source=src, output_dir=tmp_path / "k", options=opts, progress=NullProgress())
    stored = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "k" / res.files[0])).tensors}
    assert stored["output.weight"].tensor_type.name == "Q6_K"
    head = next(t for t in src.tensors() if t.role.value == "lm_head")
    np.testing.assert_array_equal(np.asarray(stored["output.weight"].data).view(np.uint8).reshape(head.shape[0], -1),
                                  ggml_quantize(head.to_float32(), GGMLType.Q6_K))
    (tmp_path / "r").mkdir()
    opts = ExportOptions(precision="int4", extra={"tensor_types": r"blk\.1\.ffn_.*=Q8_0"})
    res = plugin.export(source=src, output_dir=tmp_path / "r", options=opts, progress=NullProgress())
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "r" / res.files[0])).tensors}
    assert (types["blk.1.ffn_up.weight"], types["blk.1.ffn_down.weight"], types["blk.0.ffn_up.weight"]) == ("Q8_0", "Q8_0", "Q4_0")
    (tmp_path / "b").mkdir()
    opts = ExportOptions(precision="int4", scheme="Q4_K_M", extra={"tensor_types": "token_embd=Q8_0"})
    res = plugin.export(source=src, output_dir=tmp_path / "b", options=opts, progress=NullProgress())
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "b" / res.files[0])).tensors}
    assert types["token_embd.weight"] == "Q8_0"
    assert [p.name for p in (tmp_path / "b").iterdir()] == res.files, "the lossless temporary GGUF must be removed"


@pytest.mark.parametrize("scheme", ["Q4_K_M", "Q6_K"])
def test_quantize_hook_k_quants_dequantize_close(sources, scheme):
    src = sources("phi4-mini")
    t = next(t for t in src.tensors() if t.role.value == "gate_up")
    q = plugin.quantize(tensor=t, options=ExportOptions(precision="int4" if scheme == "Q4_K_M" else "int8", scheme=scheme),
                        source=src)
    w = t.to_float32()
    err = np.abs(q.dequantize() - w).max() / np.abs(w).max()
    assert q.shape == w.shape and err < 0.2 and q.scheme == ("Q4_K" if scheme == "Q4_K_M" else "Q6_K")
