"""Turn rows of a source tensor into ggml bytes: the core's path for our types, ggml's for the rest.

F32/F16/BF16 and Q8_0/Q4_0/Q4_1 go through :func:`phi_quant.quant.encode.encode` (values from
the core's recipe, bytes from phi-quant's kernel); every other ggml type (K-quants, Q5_0/Q5_1)
through ggml's own ``ggml_quantize_chunk``, with the calibrated importance of each input channel
as its importance matrix when the recipe calibrated. Blocks never cross a row, so a matrix is encoded in
row chunks of a few MiB: memory stays flat however large the tensor (a 200k-row embedding included).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from phi_quant.errors import BadWeightsError
from phi_quant.model.checks import count_nonfinite
from phi_quant.model.tensors import SourceTensor
from phi_quant.quant.encode import encode
from phi_quant.quant.recipes import Recipe, RecipeContext

from .constants import GGMLType
from .phimoe import Rewrite

__all__ = ["CHUNK_BYTES", "encode_rows", "encode_tensor_chunks", "check_finite", "calibrated_importance"]

#: Source bytes per chunk: bounds the working set of one conversion step.
CHUNK_BYTES = 16 << 20

def check_finite(raw: np.ndarray, dtype: str, name: str) -> None:
    """Raise :class:`BadWeightsError` naming ``name`` if ``raw`` (stored dtype; a whole tensor or one
    chunk of its rows) holds NaN or Inf. The test is the core's :func:`~phi_quant.model.checks.count_nonfinite`."""
    if count_nonfinite(raw, dtype):
        raise BadWeightsError(f"tensor {name} contains NaN or Inf values; the checkpoint is damaged (re-download or re-save it)")


def calibrated_importance(context: RecipeContext | None) -> np.ndarray | None:
    """The importance ggml's own quantizer gets: the calibrated mean x² of each input channel when the
    recipe calibrated (llama.cpp's imatrix), else None (data-free recipes leave ggml's types to ggml)."""
    if context is None or "calibration" not in context.stats:
        return None
    return context.importance


def encode_rows(raw: np.ndarray, dtype: str, ggml_type: GGMLType, name: str = "tensor", recipe: Recipe | str | None = None,
                context: RecipeContext | None = None) -> np.ndarray:
    """Encode a 2-D block of rows (stored dtype, bf16 as uint16) as ggml ``ggml_type`` bytes [rows, row_bytes]."""
    from .plan import core_scheme

    scheme = core_scheme(ggml_type)
    if scheme.layout == "native":
        import phi_quant.quant as q

        from .ggml_lib import ggml_quantize

        return ggml_quantize(q.to_float32(raw, dtype, name=name), GGMLType(ggml_type), calibrated_importance(context))
    arrays = encode(raw, dtype, scheme, recipe, context=context, name=name)
    out = arrays["blocks"] if "blocks" in arrays else np.asarray(arrays["weight"]).view(np.uint8)
    return out.reshape(raw.shape[0], -1)


#: Types whose encoding refuses NaN/Inf itself, naming the tensor (the kernel's fused path, or the
#: recipe's values): no separate scan of the rows.
_CHECKED_BY_ENCODE = (GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1)


def encode_tensor_chunks(tensor: SourceTensor, ggml_type: GGMLType, recipe: Recipe | str | None = None,
                         context: RecipeContext | None = None, rewrite: Rewrite | None = None) -> Iterator[np.ndarray]:
    """Yield the tensor's ggml bytes chunk by chunk (rows in order), checking for NaN/Inf.

    ``recipe`` and ``context`` choose the values of our kernel's types (:func:`encode_rows`).
    ``rewrite`` (PhiMoE's faithful weights, :mod:`.phimoe`) changes the values first: each chunk
    is widened to float32, rewritten and encoded from there.
    """
    import phi_quant.quant as q

    if len(tensor.shape) != 2 or rewrite is not None:  # whole-tensor view: 1-D, or a rewrite's statistics
        raw = tensor.raw()
        rows = raw.reshape(1, -1) if raw.ndim == 1 else raw.reshape(-1, raw.shape[-1])
        step = max(1, CHUNK_BYTES // max(1, rows.shape[1] * rows.dtype.itemsize))
        check_finite(raw, tensor.dtype, tensor.name)
        apply = rewrite.prepare(rows, tensor.dtype, step) if rewrite is not None else None
        for r0 in range(0, rows.shape[0], step):
            block = rows[r0 : r0 + step]
            if apply is None:
                yield encode_rows(block, tensor.dtype, ggml_type, tensor.name, recipe, context)
            else:
                yield encode_rows(apply(q.to_float32(block, tensor.dtype)), "f32", ggml_type, tensor.name, recipe, context)
        return
    row_bytes = tensor.nbytes // max(1, tensor.shape[0])
    for _, block in tensor.row_blocks(max(1, CHUNK_BYTES // max(1, row_bytes))):  # one block mapped at a time
        if GGMLType(ggml_type) not in _CHECKED_BY_ENCODE:
            check_finite(block, tensor.dtype, tensor.name)
        yield encode_rows(block, tensor.dtype, ggml_type, tensor.name, recipe, context)
        del block
