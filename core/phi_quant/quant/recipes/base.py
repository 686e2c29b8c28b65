"""What every recipe is: a rule that chooses a tensor's values for the scheme the backend picked.

A recipe sees float32 rows ``[n, K]`` of one tensor (a row chunk: rows are independent in every
layout, so streaming a tensor in chunks gives the same values), the :class:`~phi_quant.quant.scheme.Scheme`
and a :class:`RecipeContext`, and returns :class:`~phi_quant.quant.values.QuantValues` that the
kernel packs. Three hooks leave room for recipes that need more:

- :meth:`Recipe.transform` may change the float weight before it is quantized (activation-aware
  scaling folds a scale into the weight and its neighbour);
- :attr:`RecipeContext.stats` carries per-tensor calibration statistics (per-input-channel mean
  |x|, sum of x², XᵀX) for recipes that use data; data-free recipes ignore it;
- :meth:`Recipe.values` may produce codes directly (error compensation) as long as they lie in
  the scheme's code range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..scheme import Scheme
from ..values import QuantValues

__all__ = ["Recipe", "RecipeContext"]


@dataclass(frozen=True)
class RecipeContext:
    """What a recipe may know about the tensor besides its weights.

    ``importance``: float32 [K] weights of each input channel in the error a recipe minimises
    (data-free: the square of the RMSNorm gain that scales this matmul's input; with calibration:
    mean x²), or None for a plain squared error.
    """

    name: str = "tensor"
    role: str | None = None
    layer: int | None = None
    importance: np.ndarray | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class Recipe:
    """Base class; subclasses set :attr:`name` and :attr:`summary` and implement :meth:`values`."""

    #: CLI name (``--recipe NAME``).
    name: str = ""
    #: One line for ``--help`` and the model card.
    summary: str = ""
    #: True when the values are the vendor's round-to-nearest ones (the kernel's fused fast path).
    fused: bool = False

    def refusal(self, scheme: Scheme) -> str | None:
        """Why this recipe cannot choose values for ``scheme`` (None when it can)."""
        if not scheme.packed_by_kernel:
            return f"{scheme.name} is written by the vendor's own quantizer, not from recipe values"
        return None

    def transform(self, w: np.ndarray, context: RecipeContext) -> np.ndarray:
        """The float weight to quantize (default: unchanged)."""
        return w

    def values(self, w: np.ndarray, scheme: Scheme, context: RecipeContext) -> QuantValues:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for the manifest."""
        return {"name": self.name}
