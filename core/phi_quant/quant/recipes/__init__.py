"""Recipes: the core's rules for choosing a tensor's quantized values, once for every backend.

The backend picks each tensor's :class:`~phi_quant.quant.scheme.Scheme` (layout, bits, group,
symmetry, scale dtype); the recipe picks the values (codes, scales, zeros); the kernel packs them
(:func:`phi_quant.quant.values.pack`). ``--recipe NAME`` on ``quantize`` and ``compare``
selects one; the maths and cost of each are in ``docs/recipes.md``.

======  =====================================================================================
rtn     the vendor's round-to-nearest rule, bit-identical to its quantizer (default)
clip    per group, the shrunk range with the least weighted squared error + least-squares refit
hqq     HQQ's half-quadratic zero-point optimisation (formats with zero points only)
awq     activation-aware scaling from calibration data, folded into the model (then rtn)
gptq    GPTQ error compensation from the calibration XᵀX, in each tensor's own scheme
======  =====================================================================================

Names combine with ``+`` (``awq+gptq``, ``awq+clip``, ``gptq+clip``): :mod:`.calibrated` says how.
"""

from __future__ import annotations

from ...errors import BadInputError
from .base import Recipe, RecipeContext
from .clip import Clip
from .hqq import HQQ
from .rtn import RTN

__all__ = ["Recipe", "RecipeContext", "RECIPES", "DEFAULT_RECIPE", "get_recipe", "recipe_names"]

#: name -> class; every entry is a data-free recipe.
RECIPES: dict[str, type[Recipe]] = {"rtn": RTN, "clip": Clip, "hqq": HQQ}
DEFAULT_RECIPE = "rtn"


def recipe_names() -> tuple[str, ...]:
    """The single recipe names (data-free ones, then the calibrated parts); ``+`` combines them."""
    from .calibrated import CALIBRATED_PARTS

    return (*RECIPES, *CALIBRATED_PARTS)


def get_recipe(name: str | Recipe | None) -> Recipe:
    """The recipe called ``name`` (None: the default); an unknown name raises BadInputError.

    Calibrated recipes and combinations (``awq``, ``gptq``, ``awq+gptq``, ...) are parsed by
    :func:`.calibrated.parse_recipe`.
    """
    if isinstance(name, Recipe):
        return name
    key = (name or DEFAULT_RECIPE).strip().lower()
    if key in RECIPES:
        return RECIPES[key]()
    from .calibrated import parse_recipe

    return parse_recipe(key, RECIPES)
