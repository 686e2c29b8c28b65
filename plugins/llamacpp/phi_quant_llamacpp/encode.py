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


#: Types whose kernel refuses NaN/Inf itself (naming the tensor): no separate scan of the rows.
_CHECKED_BY_KERNEL = (GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1)


def encode_tensor_chunks(tensor: SourceTensor, ggml_type: GGMLType) -> Iterator[np.ndarray]:
    """Yield the tensor's ggml bytes chunk by chunk (rows in order), checking for NaN/Inf."""
    if len(tensor.shape) == 1:
        raw = tensor.raw()
        check_finite(raw, tensor.dtype, tensor.name)
        yield encode_rows(raw[None, :], tensor.dtype, ggml_type, tensor.name)
        return
    row_bytes = tensor.nbytes // max(1, tensor.shape[0])
    for _, block in tensor.row_blocks(max(1, CHUNK_BYTES // max(1, row_bytes))):  # one block mapped at a time
        if GGMLType(ggml_type) not in _CHECKED_BY_KERNEL:
            check_finite(block, tensor.dtype, tensor.name)
        yield encode_rows(block, tensor.dtype, ggml_type, tensor.name)
        del block

