"""Our compressed constants equal NNCF's own compression of the same weights, bit for bit.

NNCF's ``compress_weights`` runs on a one-MatMul OpenVINO model holding the same weight; its
constants (quantized values, zero point, f16 scale) are compared byte for byte with what our
``quantize`` hook packs. Large weights take NNCF's OpenVINO-accelerated path, small ones its numpy
path, so both are covered. A last test reads an exported IR back and compares a constant in it.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest
from openvino import opset13 as ops

from phi_quant.model.tensors import SourceTensor, TensorRole
from phi_quant.testing.factory import float32_to_bf16_bits
from phi_quant.types import ExportOptions

nncf = pytest.importorskip("nncf")

MODES = {
    "int4_asym": "INT4_ASYM",
    "int4_sym": "INT4_SYM",
    "int8_asym": "INT8_ASYM",
    "int8_sym": "INT8_SYM",
}


def _bf16_weight(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    w[0, :7] = 0.0  # a row start of zeros and a constant group stress the eps floors
    w[1, :] = 0.25
    return float32_to_bf16_bits(w)


def _nncf_constants(w32: np.ndarray, mode: str, group_size: int | None) -> dict[str, np.ndarray]:
    """Bytes of the constants NNCF writes for a MatMul weight ``w32`` [N, K]."""
    p = ops.parameter([1, w32.shape[1]], ov.Type.f32, name="x")
    model = ov.Model([ops.result(ops.matmul(p, ops.constant(w32), False, True))], [p])
    kwargs = {"group_size": group_size or -1, "ratio": 1.0, "all_layers": True} if mode.startswith("int4") else {}
    model = nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, MODES[mode]), **kwargs)
    out = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_element_type() == ov.Type.i64:
            continue
        name = op.get_friendly_name()
        key = "zero_point" if name.endswith("/zero_point") else "scale" if name.endswith("/scale") else "weight"
        out[key] = np.frombuffer(bytes(op.get_tensor_view().data), dtype=np.uint8)
    return out


def _ours(raw: np.ndarray, mode: str, group_size: int | None) -> dict[str, np.ndarray]:
    from phi_quant_openvino import plugin

    t = SourceTensor("model.layers.0.mlp.down_proj.weight", TensorRole.DOWN, 0, "bf16", raw.shape, _loader=lambda: raw)
    precision = "int4" if mode.startswith("int4") else "int8"
    opts = ExportOptions(precision=precision, group_size=group_size or -1, symmetric=mode.endswith("_sym"))
    q = plugin.quantize(tensor=t, options=opts)
    assert q.meta["mode"] == mode and q.meta["group_size"] == group_size
    return {k: np.ascontiguousarray(v).reshape(-1).view(np.uint8) for k, v in q.arrays.items()}


# NNCF's int8 modes are per channel only (and so are ours); int4 takes groups or per channel.
_CASES = [(m, g) for m in MODES for g in ((128, 32, None) if m.startswith("int4") else (None,))]


@pytest.mark.parametrize("mode, group_size", _CASES, ids=[f"{m}-g{g or 'cw'}" for m, g in _CASES])
@pytest.mark.parametrize("shape", [(8, 256), (96, 384)], ids=["numpy-path", "openvino-path"])
def test_constants_equal_nncf(mode, group_size, shape):
    raw = _bf16_weight(*shape, seed=shape[0])
    w32 = (raw.astype(np.uint32) << 16).view(np.float32)
    theirs = _nncf_constants(w32, mode, group_size)
    ours = _ours(raw, mode, group_size)
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key].tobytes() == theirs[key].tobytes(), f"{mode} g{group_size} {key} differs from NNCF"


def test_exported_ir_holds_nncf_constants(export_tiny):
    """The bytes in the saved .bin (read back by OpenVINO) are NNCF's for that weight."""
    from phi_quant.model.source import open_model
    from phi_quant.testing.factory import cached_checkpoint

    out, _ = export_tiny("phi4", "int4", group_size=64)
    model = ov.Core().read_model(out / "openvino_model.xml")
    name = "model.layers.1.self_attn.qkv_proj.weight"
    found = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_friendly_name() in (name, f"{name}/zero_point", f"{name}/scale"):
            key = op.get_friendly_name().removeprefix(name).lstrip("/") or "weight"
            found[key] = np.frombuffer(bytes(op.get_tensor_view().data), dtype=np.uint8)
    with open_model(cached_checkpoint("phi4")) as src:
        w32 = src.tensor(TensorRole.QKV, 1).to_float32()
    theirs = _nncf_constants(w32, "int4_asym", 64)
    assert sorted(found) == sorted(theirs)
    for key in theirs:
        assert found[key].tobytes() == theirs[key].tobytes(), key
