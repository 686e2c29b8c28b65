"""``rtn``: each vendor's own round-to-nearest rule, bit-identical to the vendor's quantizer.

The values are what ggml's ``quantize_row_*_ref``, onnxruntime's MLAS blockwise quantizer,
``mx.quantize`` and NNCF compute (:mod:`phi_quant.quant.reference` states each rule); the export
path runs the kernel's fused quantize-and-pack for them, which ``tests/test_pack.py`` proves
equal to packing these values. Cost: one pass over the weight.
"""

from __future__ import annotations

import numpy as np

from ..scheme import Scheme
from ..values import QuantValues, rtn_values
from .base import Recipe, RecipeContext

__all__ = ["RTN"]


class RTN(Recipe):
    name = "rtn"
    summary = "round to nearest, exactly as each vendor's own quantizer (the default)"
    fused = True

    def values(self, w: np.ndarray, scheme: Scheme, context: RecipeContext) -> QuantValues:
        return rtn_values(w, scheme)
