"""llama.cpp's importance matrix from phi-quant's calibration statistics: as a file and for its quantizer.

llama.cpp's ``llama-imatrix`` writes, and ``llama-quantize --imatrix`` reads
(``common/imatrix-loader.cpp`` of the llama.cpp that llama-cpp-python vendors), a GGUF file with
``general.type = "imatrix"``, the keys ``imatrix.datasets`` (the texts), ``imatrix.chunk_count`` and
``imatrix.chunk_size``, and per matmul weight two F32 tensors: ``<weight>.in_sum2`` (ggml shape
[K, n_mat]: the sum of x² of every input channel over the tokens, per expert) and
``<weight>.counts`` ([1, n_mat]: the tokens). llama-quantize divides one by the other, i.e. uses
the mean x² per channel, which is exactly the ``mean_sq`` phi-quant's calibration keeps. A tied
embedding is the output matmul too: its entry is ``token_embd.weight``, from the final norm's output.

:func:`imatrix_entries` gives the entries of a statistics file under GGUF names,
:func:`write_imatrix` the file (written next to every calibrated GGUF export, from the statistics of
the original weights, so the vendor tool can reuse them on its own conversion of the model), and
:func:`quantizer_imatrix` the C array ``llama_model_quantize`` takes for our own K-quant route.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from phi_quant.arch.roles import TensorRole

from .constants import IMATRIX_FILE, GGMLType, Key, TensorName, ValueType
from .gguf_file import GGUFStreamWriter, TensorSlot, Typed
from .layout import gguf_name

__all__ = ["IMATRIX_FILE", "imatrix_entries", "write_imatrix", "quantizer_imatrix"]


def _weight_name(role: str, layer: int | None, tied: bool) -> str | None:
    role = TensorRole(role)
    if role == TensorRole.LM_HEAD:
        return TensorName.TOKEN_EMBD if tied else TensorName.OUTPUT
    try:
        return gguf_name(role, layer)
    except Exception:
        return None


def imatrix_entries(stats: Any, tied: bool) -> list[tuple[str, np.ndarray, int]]:
    """(GGUF weight name, Σx² float32 [K], tokens) for every point of ``stats`` (a
    :class:`phi_quant.calib.CalibrationStats`) that a GGUF matmul reads, sorted by name as llama.cpp writes."""
    out = []
    for st in stats:
        if st.point.expert is not None:
            continue
        name = _weight_name(st.point.role, st.point.layer, tied)
        if name is None or st.count == 0:
            continue
        out.append((name, (st.mean_sq.astype(np.float64) * st.count).astype(np.float32), st.count))
    return sorted(out, key=lambda e: e[0])


def write_imatrix(path: Path, stats: Any, tied: bool, datasets: Iterable[str]) -> Path:
    """Write ``stats`` as a llama.cpp ``imatrix.gguf`` at ``path``."""
    entries = imatrix_entries(stats, tied)
    meta = stats.meta
    metadata = {
        Key.GENERAL_TYPE: "imatrix",
        Key.IMATRIX_DATASETS: Typed([str(d) for d in datasets] or ["phi-quant calibration"], ValueType.STRING),
        Key.IMATRIX_CHUNK_COUNT: Typed(int(meta.get("sequences") or 1), ValueType.UINT32),
        Key.IMATRIX_CHUNK_SIZE: Typed(int(meta.get("window") or 0), ValueType.UINT32),
    }
    slots = []
    for name, sums, _ in entries:
        slots += [TensorSlot(f"{name}.in_sum2", (1, sums.shape[0]), GGMLType.F32),
                  TensorSlot(f"{name}.counts", (1, 1), GGMLType.F32)]
    with open(path, "wb") as fh:
        writer = GGUFStreamWriter(fh, metadata, slots)
        for name, sums, count in entries:
            writer.write(f"{name}.in_sum2", sums.reshape(1, -1))
            writer.write(f"{name}.counts", np.asarray([[count]], np.float32))
        writer.finish()
    return Path(path)


def quantizer_imatrix(importance: dict[str, np.ndarray]) -> tuple[Any, list[Any]]:
    """``llama_model_quantize_params.imatrix`` for {GGUF weight name: mean x² [K]}: the terminated C
    array, and the Python objects that must stay alive while llama.cpp reads it."""
    import llama_cpp

    items = sorted(importance.items())
    arr = (llama_cpp.llama_model_imatrix_data * (len(items) + 1))()
    keep: list[Any] = [arr]
    for i, (name, values) in enumerate(items):
        data = np.ascontiguousarray(values, dtype=np.float32)
        b = name.encode()
        keep += [data, b]
        arr[i].name = b
        arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = data.size
    arr[len(items)].name = None
    arr[len(items)].data = None
    arr[len(items)].size = 0
    return ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data)), keep
