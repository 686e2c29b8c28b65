"""The files hold exactly what mlx would produce: packed weights, scales and biases equal
``mx.quantize`` on the same source weights (in the source dtype) bit for bit, and float tensors
equal mlx's own casts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phi_quant.testing.factory import VARIANTS

mx = pytest.importorskip("mlx.core")


def _source_array(tensor):
    raw = tensor.raw()
    if tensor.dtype == "bf16":
        return mx.array(np.ascontiguousarray(raw).view(np.uint16)).view(mx.bfloat16)
    return mx.array(np.ascontiguousarray(raw))


def _bits(a):
    """Raw bit patterns of an mlx array as numpy (bf16 included)."""
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


CASES = [(v, p, None, None) for v in VARIANTS for p in ("int4", "int8")] + [
    ("phi4-mini", "int4", 32, None), ("phi4-mini", "int4", 128, None), ("phi3-mini", "int8", 32, None),
    ("phi3-mini", "int8", 128, None), ("phi4", "int4", None, "float16"), ("phi4", "int8", 32, "float32"),
]


@pytest.mark.parametrize("variant,precision,group_size,dtype", CASES)
def test_quantized_tensors_equal_mx_quantize(variant, precision, group_size, dtype, sources, exported):
    """mx.quantize runs on the source weights in the source dtype (or cast to ``dtype`` first, as
    mlx-lm convert does with ``--dtype``)."""
    extra = {"dtype": dtype} if dtype else {}
    out, _ = exported(variant, precision, group_size=group_size, **extra)
    cfg = json.loads((out / "config.json").read_text())
    quant = cfg["quantization"]
    assert cfg["quantization_config"] == quant
    bits, gs = {"int4": 4, "int8": 8}[precision], group_size or 64
    assert (quant["bits"], quant["group_size"], quant["mode"]) == (bits, gs, "affine")
    weights = _load_all(out)
    checked = 0
    for tensor in sources(variant).tensors():
        module = tensor.name[: -len(".weight")]
        source = _source_array(tensor)
        if dtype:
            source = source.astype(getattr(mx, dtype))
        if not tensor.role.is_matmul:
            assert f"{module}.scales" not in weights
            assert np.array_equal(_bits(weights[tensor.name]), _bits(source))
            continue
        assert f"{module}.scales" in weights, f"{module} was not quantized"
        want = mx.quantize(source, group_size=gs, bits=bits)
        for suffix, expected in zip(("weight", "scales", "biases"), want):
            got = weights[f"{module}.{suffix}"]
            assert got.dtype == expected.dtype and got.shape == expected.shape, f"{module}.{suffix}"
            assert np.array_equal(_bits(got), _bits(expected)), f"{module}.{suffix} differs from mx.quantize"
        checked += 1
    assert checked >= 1 + 4 * sources(variant).config.num_layers


@pytest.mark.parametrize("precision,dtype", [("fp32", "float32"), ("fp16", "float16"), ("bf16", "bfloat16")])
def test_float_tensors_equal_mlx_casts(precision, dtype, sources, exported):
    out, _ = exported("phi4", precision)
    weights = _load_all(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == dtype and "quantization" not in cfg
    for tensor in sources("phi4").tensors():
        want = _source_array(tensor).astype(getattr(mx, dtype))
        got = weights[tensor.name]
        assert got.dtype == want.dtype and np.array_equal(_bits(got), _bits(want)), tensor.name
