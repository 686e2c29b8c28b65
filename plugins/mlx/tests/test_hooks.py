"""Hooks other than export: hardware report, precisions, and the per-tensor ``quantize`` hook
returning exactly what the export writes."""

from __future__ import annotations

import numpy as np
import pytest

from phi_quant.model.tensors import TensorRole
from phi_quant.types import ExportOptions
from phi_quant_mlx import plugin


def test_detect_hardware_reports_cpu_or_metal():
    import mlx.core as mx

    report = plugin.detect_hardware()
    assert report.backend == "mlx" and report.available
    assert ("metal" in report.accelerators) == bool(mx.metal.is_available())
    assert any(d["type"] == "cpu" for d in report.devices)


def test_precisions_declare_schemes_and_thresholds():
    specs = {s.precision: s for s in plugin.supported_precisions()}
    assert list(specs) == ["fp32", "fp16", "bf16", "int8", "int4"]
    assert specs["int4"].scheme == "affine-int4-g64" and specs["int4"].default_group_size == 64
    assert specs["fp32"].thresholds.max_abs_logit == 1e-3 and specs["fp32"].thresholds.top1_min == 1.0


def test_registered_through_entry_point():
    from phi_quant.plugins import get_manager

    backend = get_manager().get("mlx")
    assert backend.info.distribution == "phi-quant-mlx" and backend.info.format == "MLX safetensors"


@pytest.mark.parametrize("precision,group_size", [("int4", None), ("int8", 32), ("bf16", None)])
def test_quantize_hook_matches_exported_bytes(precision, group_size, sources, exported):
    import mlx.core as mx

    src = sources("phi3-mini")
    out, _ = exported("phi3-mini", precision, group_size=group_size)
    weights = mx.load(str(out / "model.safetensors"))
    tensor = src.tensor(TensorRole.GATE_UP, 1)
    qt = plugin.quantize(tensor=tensor, options=ExportOptions(precision=precision, group_size=group_size))
    module = "model.layers.1.mlp.gate_up_proj"
    assert qt.name == f"{module}.weight" and qt.shape == tuple(tensor.shape)
    for key, arr in qt.arrays.items():
        want = weights[f"{module}.{key}"]
        if want.dtype in (mx.bfloat16, mx.float16):
            want = want.view(mx.uint16)
        assert np.array_equal(np.asarray(arr).view(np.array(want).dtype), np.array(want)), key
    w = tensor.to_float32()
    err = np.abs(qt.dequantize() - w).max() / np.abs(w).max()
    assert err < {"int4": 0.2, "int8": 0.02, "bf16": 1e-2}[precision]


def test_chat_generation_uses_the_template(exported):
    out, _ = exported("phi4-mini", "int8")
    model = plugin.load_model(path=out, options={})
    try:
        assert model.tokenizer.chat_template
        ids = model.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) else ids
        assert model.detokenize(ids).startswith("<|user|>")
        text = model.generate("Hi", max_new_tokens=3, chat=True)
        assert isinstance(text, str) and text
    finally:
        model.close()


def test_export_imports_neither_mlx_nor_torch(tmp_path):
    """Conversion is numpy + phi-quant's kernel: it runs where mlx does not, and never loads torch."""
    import subprocess
    import sys

    code = (
        "import sys, pathlib\n"
        "from phi_quant.model.source import open_model\n"
        "from phi_quant.testing.factory import cached_checkpoint\n"
        "from phi_quant.types import ExportOptions, NullProgress\n"
        "from phi_quant_mlx import plugin\n"
        "with open_model(cached_checkpoint('phi4-mini')) as src:\n"
        f"    plugin.export(source=src, output_dir=pathlib.Path({str(tmp_path)!r}), "
        "options=ExportOptions('int4'), progress=NullProgress())\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlx', 'mlx_lm', 'torch', 'transformers'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "model.safetensors").exists()
