"""K-quant mixes (Q4_K_M, Q5_K_M, Q6_K) made by llama.cpp's own ``llama_model_quantize``.

Our kernel does not implement the K-quant scale search, so these schemes are produced by
llama.cpp itself from a lossless temporary GGUF (same dtype as the checkpoint), exactly as
``llama-quantize`` would: its per-tensor mix rules (output at Q6_K, some attn_v/ffn_down layers
higher) apply, and ``tensor_types`` overrides are passed through as its tensor-type patterns.
"""

from __future__ import annotations

import ctypes
import logging
import re
from pathlib import Path

import numpy as np

from phi_quant.errors import ExportFailedError

from .constants import SCHEME_FILE_TYPES, GGMLType

__all__ = ["llama_quantize_file", "override_patterns"]

#: Rows of tensor data llama.cpp may hold at once (its default is 8 GiB).
MAX_BUF_BYTES = 64 << 20


def override_patterns(overrides: dict[str, str]) -> list[tuple[str, int]]:
    """{name-or-regex: TYPE} -> llama.cpp (regex, ggml_type) pairs; bare names match exactly."""
    out = []
    for pattern, type_name in overrides.items():
        if re.fullmatch(r"[A-Za-z0-9_.]+", pattern):
            name = pattern if pattern.endswith(".weight") else pattern + ".weight"
            pattern = "^" + re.escape(name) + "$"
        out.append((pattern, int(GGMLType[type_name])))
    return out


def llama_quantize_file(src: Path, dst: Path, scheme: str, overrides: dict[str, str], threads: int | None = None,
                        verbose: bool = False, imatrix: dict[str, np.ndarray] | None = None) -> None:
    """Quantize GGUF ``src`` into ``dst`` with llama.cpp's mix for ``scheme`` (its log only if ``verbose``).

    ``imatrix`` ({GGUF weight name: mean x² per input channel}) is handed to llama.cpp as its
    importance matrix, as ``llama-quantize --imatrix`` does after reading the file.
    """
    import llama_cpp
    from llama_cpp._logger import logger

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(SCHEME_FILE_TYPES[scheme])
    params.nthread = int(threads or 0)
    params.max_buf_size = MAX_BUF_BYTES
    keep = []
    pairs = override_patterns(overrides)
    if pairs:
        arr = (llama_cpp.llama_model_tensor_override * (len(pairs) + 1))()
        for i, (pattern, type_id) in enumerate(pairs):
            b = pattern.encode()
            keep.append(b)
            arr[i].pattern = b
            arr[i].type = type_id
        arr[len(pairs)].pattern = None
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(arr)
    if imatrix:
        from .imatrix import quantizer_imatrix

        params.imatrix, held = quantizer_imatrix(imatrix)
        keep.append(held)
    level = logger.level
    logger.setLevel(logging.DEBUG if verbose else logging.ERROR)
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        logger.setLevel(level)
    if rc != 0:
        raise ExportFailedError(
            f"llama.cpp's quantizer failed (code {rc}) making {scheme}; pass --option verbose=true to see its log"
        )
