"""Write one checkpoint tensor in the storage a graph node needs, a chunk at a time.

Three layouts:

* float copy as stored (``[N, K]``: embedding tables, norms),
* float transposed (``[K, N]``: ONNX ``MatMul`` computes ``A @ B`` while Hugging Face stores
  ``[out, in]``), produced by column blocks so no full transposed copy exists,
* ``MatMulNBits`` blocks (``B [N, k_blocks, block_size*bits/8]``, ``scales``, ``zero_points``)
  packed by phi-quant's kernel (:func:`phi_quant.quant.matmulnbits_quantize`) row block by row
  block; rows are independent, so chunking changes nothing in the bytes.

Every chunk is checked for NaN/Inf, which raises :class:`BadWeightsError` naming the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from phi_quant.errors import BadWeightsError
from phi_quant.model.tensors import SourceTensor
from phi_quant.pipeline import ahead

from .dtypes import ONNX_FLOAT_TYPES, convert, to_float32
from .external_data import ExternalDataWriter

__all__ = [
    "NBitsTensors",
    "write_float",
    "write_float_transposed",
    "write_nbits",
    "pack_nbits",
    "check_finite",
    "rows_of",
    "CHUNK_ELEMENTS",
]

#: Elements converted per chunk (~32 MB of float32): bounds the writer's extra memory.
CHUNK_ELEMENTS = 8 * 1024 * 1024


def check_finite(chunk: np.ndarray, tensor: SourceTensor) -> None:
    if not np.isfinite(chunk).all():
        bad = int(np.size(chunk) - np.count_nonzero(np.isfinite(chunk)))
        raise BadWeightsError(
            f"tensor {tensor.name} holds {bad} NaN/Inf value(s) in one block; the checkpoint is "
            "damaged or was saved after a diverged step: re-download or re-save it"
        )


def write_float(writer: ExternalDataWriter, name: str, tensor: SourceTensor, kind: str) -> TensorProto:
    """Store ``tensor`` unchanged in layout, converted to float ``kind`` (fp32/fp16/bf16)."""
    onnx_type, _ = ONNX_FLOAT_TYPES[kind]
    rows = tensor.shape[0] if len(tensor.shape) > 1 else 1
    step = max(1, CHUNK_ELEMENTS // max(1, tensor.numel // rows))
    itemsize = 4 if kind == "fp32" else 2
    writer.begin(name, onnx_type, tensor.shape, tensor.numel * itemsize)
    for _, chunk in tensor.row_blocks(step):
        chunk = chunk.reshape(1, -1) if chunk.ndim == 1 else chunk
        check_finite(to_float32(chunk, tensor.dtype), tensor)
        writer.write(convert(chunk, tensor.dtype, kind))
        del chunk
    return writer.end()


def rows_of(tensor: SourceTensor, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) as a fresh mapping: dropping it unmaps the pages, so resident memory stays
    at one chunk rather than growing to the whole tensor as the chunks are read."""
    raw = tensor.raw()
    return raw.reshape(raw.shape[0], -1)[r0:r1] if raw.ndim > 1 else raw.reshape(1, -1)


def write_float_transposed(writer: ExternalDataWriter, name: str, tensor: SourceTensor, kind: str) -> TensorProto:
    """Store a 2-D ``[N, K]`` weight as ``[K, N]`` in float ``kind``.

    Reads contiguous row blocks (never the whole tensor at once) and writes each block's
    transpose as K short runs into their places in the reserved region.
    """
    onnx_type, _ = ONNX_FLOAT_TYPES[kind]
    n, k = tensor.shape
    itemsize = 4 if kind == "fp32" else 2
    step = max(1, CHUNK_ELEMENTS // max(1, k))
    region = writer.reserve(name, onnx_type, (k, n))
    for r0, rows in tensor.row_blocks(step):  # each block its own mapping: memory stays at one block
        block = to_float32(rows, tensor.dtype)  # [rows, K] float32 copy
        del rows
        check_finite(block, tensor)
        t = convert(np.ascontiguousarray(block.T), "f32", kind)  # [K, rows]
        del block
        for kk in range(k):
            region.write_at((kk * n + r0) * itemsize, t[kk])
    return region.finish()


@dataclass(frozen=True)
class NBitsTensors:
    """Initializers of one MatMulNBits weight (``zero_points`` is None when symmetric).

    ``gather_data`` is the same bytes as ``B`` seen as ``[N, k_blocks * blob]``, the shape
    ``GatherBlockQuantized`` reads, so a tied embedding shares storage with the lm_head.
    """

    B: TensorProto
    scales: TensorProto
    zero_points: TensorProto | None
    gather_data: TensorProto
    n: int
    k: int
    bits: int
    block_size: int


def pack_nbits(
    rows: np.ndarray, src_dtype: str, scheme, name: str = "tensor", threads: int | None = None, recipe=None, context=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits B/scales/zero_points of raw rows ``[n, K]`` under the core ``scheme``.

    Values come from the core's ``recipe`` (default: round to nearest, bit-identical to
    onnxruntime's own quantizer), bytes from phi-quant's kernel. Returns ``B`` uint8
    ``[n, k_blocks, blob]``, ``scales`` ``[n, k_blocks]`` in the activation type (float32, or
    float16 for fp16 targets: the kernel quantizes with the scale as stored, as onnxruntime's own
    quantizer does) and packed ``zero_points`` uint8 (None when symmetric: the runtime then uses
    2^(bits-1)). NaN/Inf raise BadWeightsError.
    """
    from phi_quant.quant.encode import encode

    arrays = encode(rows, src_dtype, scheme, recipe, context=context, threads=threads, name=name)
    return arrays["B"], arrays["scales"], arrays.get("zero_points")


def write_nbits(
    writer: ExternalDataWriter,
    prefix: str,
    tensor: SourceTensor,
    scheme,
    *,
    scale_kind: str = "fp32",
    threads: int | None = None,
    recipe=None,
    context=None,
) -> NBitsTensors:
    """Quantize ``tensor`` ([N, K]) to MatMulNBits blocks under ``scheme``, streaming B; scales/zero points follow."""
    n, k = tensor.shape
    bits, block_size = scheme.bits, scheme.group
    k_blocks = -(-k // block_size)
    blob = block_size * bits // 8
    step = max(1, CHUNK_ELEMENTS // max(1, k))
    writer.begin(f"{prefix}.B", TensorProto.UINT8, (n, k_blocks, blob), n * k_blocks * blob)
    scales_parts: list[np.ndarray] = []
    zp_parts: list[np.ndarray] = []
    blocks = (pack_nbits(rows, tensor.dtype, scheme, tensor.name, threads, recipe, context)
              for _, rows in tensor.row_blocks(step))  # each block its own mapping: memory stays at one block
    for B, scales, zp in ahead(blocks):  # packing runs one block ahead of writing, in a worker thread
        writer.write(B)
        scales_parts.append(scales)
        if zp is not None:
            zp_parts.append(zp)
    b_proto = writer.end()
    scales_all = np.concatenate(scales_parts, axis=0)
    scales_proto = writer.add(f"{prefix}.scales", scales_all, ONNX_FLOAT_TYPES[scale_kind][0])
    zp_proto = writer.add(f"{prefix}.zero_points", np.concatenate(zp_parts, axis=0)) if zp_parts else None
    gather = TensorProto()
    gather.CopyFrom(b_proto)
    gather.name = f"{prefix}.B_2d"
    del gather.dims[:]
    gather.dims.extend([n, k_blocks * blob])
    return NBitsTensors(b_proto, scales_proto, zp_proto, gather, n, k, bits, block_size)
