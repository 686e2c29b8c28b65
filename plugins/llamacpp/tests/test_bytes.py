"""Tensor bytes in our GGUFs equal ggml's reference quantization of the same weights.

Two vendor references: ggml's C ``ggml_quantize_chunk`` (the reference row quantizers, from the
library llama-cpp-python ships) and gguf-py's numpy ``quants.quantize``.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from phi_quant.types import ExportOptions
from phi_quant_llamacpp import plugin
from phi_quant_llamacpp.constants import GGMLType
from phi_quant_llamacpp.ggml_lib import ggml_quantize
from phi_quant_llamacpp.layout import gguf_name


@pytest.mark.parametrize("variant", ["phi3-mini", "phi4-mini"])
@pytest.mark.parametrize("precision,scheme", [("int8", "Q8_0"), ("int4", "Q4_0"), ("int4", "Q4_1"), ("fp16", "F16"), ("bf16", "BF16")])
def test_file_bytes_equal_ggml_reference(variant, precision, scheme, sources, exported):
    src = sources(variant)
    out, res = exported(variant, precision, scheme)
    tensors = {t.name: t for t in gguf.GGUFReader(str(out / res.files[0])).tensors}
    qtype = gguf.GGMLQuantizationType[scheme]
    checked = 0
    for t in src.tensors():
        if t.role.is_norm:
            continue
        stored = tensors[gguf_name(t.role, t.layer)]
        assert stored.tensor_type == qtype
        w = t.to_float32()
        got = np.asarray(stored.data).view(np.uint8).reshape(w.shape[0], -1)
        np.testing.assert_array_equal(got, ggml_quantize(w, GGMLType[scheme]), err_msg=f"{t.name} vs ggml C")
        np.testing.assert_array_equal(got, np.asarray(gguf.quants.quantize(w, qtype)).view(np.uint8).reshape(got.shape), err_msg=f"{t.name} vs gguf-py")
        hook = plugin.quantize(tensor=t, options=ExportOptions(precision=precision, scheme=scheme))
        np.testing.assert_array_equal(hook.arrays["blocks"], got)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("variant", ["phi3-mini", "phi4-mini"])
@pytest.mark.parametrize("scheme", ["Q8_0", "Q4_0", "Q4_1"])
def test_file_bytes_equal_llama_quantize_of_the_f32_gguf(variant, scheme, exported, tmp_path):
    """End to end with llama.cpp's own tool path: ``llama_model_quantize`` (pure, every matrix in
    ``scheme``) of our F32 GGUF gives the same tensor bytes as our direct export."""
    import ctypes

    import llama_cpp
    from llama_cpp._logger import logger

    from phi_quant_llamacpp.constants import SCHEME_FILE_TYPES

    f32_dir, f32_res = exported(variant, "fp32", "F32")
    ours_dir, ours_res = exported(variant, "int8" if scheme == "Q8_0" else "int4", scheme)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(SCHEME_FILE_TYPES[scheme])
    params.pure = True
    dst = tmp_path / "vendor.gguf"
    level = logger.level
    logger.setLevel("ERROR")
    try:
        rc = llama_cpp.llama_model_quantize(str(f32_dir / f32_res.files[0]).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        logger.setLevel(level)
    assert rc == 0
    vendor = {t.name: t for t in gguf.GGUFReader(str(dst)).tensors}
    ours = {t.name: t for t in gguf.GGUFReader(str(ours_dir / ours_res.files[0])).tensors}
    assert vendor.keys() == ours.keys()
    for name, t in ours.items():
        assert t.tensor_type == vendor[name].tensor_type, name
        np.testing.assert_array_equal(np.asarray(t.data).view(np.uint8), np.asarray(vendor[name].data).view(np.uint8), err_msg=name)
