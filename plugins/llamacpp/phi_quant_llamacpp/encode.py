"""Turn rows of a source tensor into ggml bytes with phi-quant's kernel (our own schemes).

Row blocks of Q8_0/Q4_0/Q4_1 never cross a row, so a matrix is encoded in row chunks of a few
MiB: memory stays flat however large the tensor (a 200k-row embedding included).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from phi_quant.errors import BadWeightsError
from phi_quant.model.checks import count_nonfinite
from phi_quant.model.tensors import SourceTensor

from .constants import GGMLType
from .phimoe import Rewrite

__all__ = ["CHUNK_BYTES", "encode_rows", "encode_tensor_chunks", "check_finite"]

#: Source bytes per chunk: bounds the working set of one conversion step.
CHUNK_BYTES = 16 << 20

def check_finite(raw: np.ndarray, dtype: str, name: str) -> None:
    """Raise :class:`BadWeightsError` naming ``name`` if ``raw`` (stored dtype; a whole tensor or one
    chunk of its rows) holds NaN or Inf. The test is the core's :func:`~phi_quant.model.checks.count_nonfinite`."""
    if count_nonfinite(raw, dtype):
        raise BadWeightsError(f"tensor {name} contains NaN or Inf values; the checkpoint is damaged (re-download or re-save it)")


def encode_rows(raw: np.ndarray, dtype: str, ggml_type: GGMLType, name: str = "tensor") -> np.ndarray:
    """Encode a 2-D block of rows (stored dtype, bf16 as uint16) as ggml ``ggml_type`` bytes."""
    import phi_quant.quant as q

    t = GGMLType(ggml_type)
    if t == GGMLType.F32:
        return q.to_float32(raw, dtype, name=name).view(np.uint8)
    if t == GGMLType.F16:
        return np.asarray(q.to_float16(raw, src_dtype=dtype, name=name)).view(np.uint8)
    if t == GGMLType.BF16:
        return np.asarray(q.to_bfloat16(raw, src_dtype=dtype, name=name)).view(np.uint8)
    if t in (GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1):
        out = np.asarray(q.ggml_quantize(raw, t.name, src_dtype=dtype, name=name))
        return out.view(np.uint8).reshape(raw.shape[0], -1)
    raise ValueError(f"{t.name} is not made by phi-quant's kernel")


def encode_tensor_chunks(tensor: SourceTensor, ggml_type: GGMLType, rewrite: Rewrite | None = None) -> Iterator[np.ndarray]:
    """Yield the tensor's ggml bytes chunk by chunk (rows in order), checking for NaN/Inf.

    ``rewrite`` (PhiMoE's faithful weights, :mod:`.phimoe`) changes the values first: each chunk
    is widened to float32, rewritten and encoded from there.
    """
    import phi_quant.quant as q

    raw = tensor.raw()
    rows = raw.reshape(1, -1) if raw.ndim == 1 else raw.reshape(-1, raw.shape[-1])
    row_bytes = rows.shape[1] * rows.dtype.itemsize
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    if rewrite is not None:
        check_finite(raw, tensor.dtype, tensor.name)  # the rewrite's statistics read every row
        apply = rewrite.prepare(rows, tensor.dtype, step)
    for r0 in range(0, rows.shape[0], step):
        block = rows[r0 : r0 + step]
        if rewrite is None:
            check_finite(block, tensor.dtype, tensor.name)
            yield encode_rows(block, tensor.dtype, ggml_type, tensor.name)
        else:
            yield encode_rows(apply(q.to_float32(block, tensor.dtype)), "f32", ggml_type, tensor.name)

