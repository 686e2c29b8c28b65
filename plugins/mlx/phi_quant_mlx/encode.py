"""One source tensor -> the bytes mlx-lm reads, in row chunks so memory stays near one chunk.

Groups run along a row (the input dimension), so quantizing a block of whole rows gives exactly
the rows ``mx.quantize`` would produce for the whole matrix. Values come from the core's recipe
(default: ``mx.quantize``'s round to nearest), packing and float casts from phi-quant's kernel
(:func:`phi_quant.quant.encode.encode`), never from mlx: conversion does not import mlx.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from phi_quant.errors import BadWeightsError
from phi_quant.model.tensors import SourceTensor

from .layout import PlannedTensor

__all__ = ["CHUNK_BYTES", "check_finite", "encode_chunks", "encode_whole", "stored_view"]

#: Source bytes per chunk: bounds the kernel's temporaries, independent of the tensor size.
CHUNK_BYTES = 16 << 20

_EXP_MASK = {"bf16": 0x7F80, "f16": 0x7C00}
_STORED = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
_PHI = {v: k for k, v in _STORED.items()}


def check_finite(raw: np.ndarray, dtype: str, name: str) -> None:
    """Raise BadWeightsError naming the tensor when it holds NaN or Inf (checked on the stored bits)."""
    if dtype == "f32":
        bad = ~np.isfinite(raw)
    else:
        bits = raw.view(np.uint16)
        mask = _EXP_MASK[dtype]
        bad = (bits & mask) == mask
    if bad.any():
        count = int(np.count_nonzero(bad))
        raise BadWeightsError(
            f"tensor {name} holds {count} NaN/Inf value(s); the checkpoint is damaged or was saved "
            "after a diverged training step: re-download it or fix the weights before converting"
        )


def stored_view(raw: np.ndarray, dtype: str) -> np.ndarray:
    """The stored bits with the right numpy dtype for the kernel (bf16 stays uint16)."""
    if dtype == "f32":
        return raw.view(np.float32)
    if dtype == "f16":
        return raw.view(np.float16)
    return raw.view(np.uint16)


def _cast(chunk: np.ndarray, src: str, out: str, name: str) -> np.ndarray:
    from phi_quant import quant as q

    if out == "F32":
        return chunk.astype(np.float32) if src != "bf16" else (chunk.astype(np.uint32) << 16).view(np.float32)
    if out == "F16":
        if src == "f16":
            return chunk
        res = q.to_float16(chunk, src_dtype=src)
        if not np.isfinite(res).all():
            raise BadWeightsError(
                f"tensor {name} has values beyond the fp16 range (|x| > 65504); export it as bf16 or fp32 instead"
            )
        return res
    if out == "BF16":
        return chunk if src == "bf16" else q.to_bfloat16(chunk, src_dtype=src)
    raise ValueError(f"unknown output dtype {out}")


def _rows_per_chunk(row_bytes: int) -> int:
    return max(1, CHUNK_BYTES // max(1, row_bytes))


def encode_chunks(planned: PlannedTensor, raw: np.ndarray | SourceTensor, recipe=None,
                  context=None) -> Iterator[dict[str, tuple[int, np.ndarray]]]:
    """Yield ``{output name: (byte offset in that tensor, array)}`` for consecutive row blocks
    (an expert's offsets are inside its module's stacked tensor).

    ``raw`` is the stored array or the source tensor itself, whose rows are then mapped one block
    at a time (:meth:`~phi_quant.model.tensors.SourceTensor.row_blocks`).
    """
    from phi_quant.quant.encode import encode

    from .plan import core_scheme

    info = planned.info
    src = info.dtype
    if len(info.shape) == 1:
        data = stored_view(raw.raw() if isinstance(raw, SourceTensor) else raw, src)
        check_finite(data, src, info.name)
        yield {f"{planned.module}.{planned.param}": (0, _cast(data, src, planned.dtype, info.name))}
        return
    step = _rows_per_chunk(info.shape[1] * (4 if src == "f32" else 2))
    blocks = raw.row_blocks(step) if isinstance(raw, SourceTensor) else ((r0, raw[r0 : r0 + step]) for r0 in range(0, len(raw), step))
    offsets = planned.slice_offsets()  # an expert's slice starts at its place in the stacked tensor
    for _, block in blocks:
        chunk = stored_view(block, src)
        if planned.quant is None:  # (encode refuses NaN/Inf itself, naming the tensor)
            check_finite(chunk, src, info.name)  # per chunk: a whole-tensor mask would cost a tensor of memory
            arrays = {f"{planned.module}.{planned.param}": _cast(chunk, src, planned.dtype, info.name)}
        else:
            qsrc, qchunk = src, chunk
            if planned.dtype != _STORED[src]:  # the ``dtype`` option: quantize from the cast weights, as mlx-lm does
                qsrc, qchunk = _PHI[planned.dtype], _cast(chunk, src, planned.dtype, info.name)
            coded = encode(qchunk, qsrc, core_scheme(planned), recipe, context=context, name=info.name)
            arrays = {f"{planned.module}.{key}": coded[key] for key in ("weight", "scales", "biases")}
        out = {}
        for name, arr in arrays.items():
            start = offsets.get(name, 0)
            out[name] = (start, arr)
            offsets[name] = start + arr.nbytes
        yield out


def encode_whole(planned: PlannedTensor, raw: np.ndarray, recipe=None, context=None) -> dict[str, np.ndarray]:
    """All output arrays of one tensor at once (the ``quantize`` hook; tests)."""
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in encode_chunks(planned, raw, recipe, context):
        for name, (_, arr) in chunk.items():
            parts.setdefault(name, []).append(arr)
    return {name: (arrs[0] if len(arrs) == 1 else np.concatenate(arrs, axis=0)) for name, arrs in parts.items()}
