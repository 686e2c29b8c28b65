"""The one path from a tensor's stored rows to its bytes: scheme (backend) + recipe (core) + pack (kernel).

Backends call :func:`encode` from both their ``export`` and their ``quantize`` hook with the
scheme their per-tensor plan chose, so the two cannot disagree. Round-to-nearest runs the
kernel's fused quantizer (bit-identical to each vendor); any other recipe chooses values in the
core and the kernel packs them. Rows are independent in every layout, so a backend may call
this once per row chunk and concatenate: the bytes are those of the whole tensor.
"""

from __future__ import annotations

import numpy as np

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.quant import _checks, reference
from phi_quant.quant.recipes import Recipe, RecipeContext, get_recipe
from phi_quant.quant.scheme import Scheme
from phi_quant.quant.values import QuantValues, convert_float, pack, quantize

__all__ = ["encode", "recipe_values", "check_recipe", "RECIPE_CHUNK_ELEMENTS"]

#: Elements a non-fused recipe works on at once: its temporaries stay a few such arrays.
RECIPE_CHUNK_ELEMENTS = 1 << 20


def check_recipe(recipe: str | Recipe | None, scheme: Scheme, name: str = "tensor") -> Recipe:
    """The recipe, or UnsupportedPrecisionError when it cannot choose values for ``scheme``."""
    r = get_recipe(recipe)
    if r.fused or scheme.is_float:
        return r
    reason = r.refusal(scheme)
    if reason:
        raise UnsupportedPrecisionError(f"recipe {r.name} cannot quantize tensor {name}: {reason}")
    return r


def recipe_values(raw: np.ndarray, src_dtype: str, scheme: Scheme, recipe: Recipe, context: RecipeContext,
                  name: str = "tensor") -> QuantValues:
    """``recipe``'s values for stored rows ``raw`` [n, K], worked out a row chunk at a time."""
    raw, src = _checks.weight_2d(raw, src_dtype, name)
    n, k = raw.shape
    step = max(1, int(getattr(recipe, "chunk_elements", RECIPE_CHUNK_ELEMENTS)) // k)
    parts = []
    for r0 in range(0, n, step):
        w = reference.decode(raw[r0 : r0 + step], src)
        finite = np.isfinite(w)
        if not finite.all():
            raise _checks.not_finite(name, r0 + int(np.argmin(finite.all(axis=1))))
        w = recipe.transform(np.ascontiguousarray(w, dtype=np.float32), context)
        parts.append(recipe.values(w, scheme, context))
    if len(parts) == 1:
        return parts[0]
    zeros = None if parts[0].zeros is None else np.concatenate([p.zeros for p in parts])
    return QuantValues(np.concatenate([p.codes for p in parts]), np.concatenate([p.scales for p in parts]), zeros)


def encode(raw: np.ndarray, src_dtype: str, scheme: Scheme, recipe: str | Recipe | None = None, *,
           context: RecipeContext | None = None, threads: int | None = None, name: str = "tensor") -> dict[str, np.ndarray]:
    """The arrays of stored rows ``raw`` [n, K] under ``scheme``, with values chosen by ``recipe``.

    Array names per layout are those of :mod:`phi_quant.quant.values`. A float scheme converts
    (every recipe agrees on a float copy); a native scheme is the backend's own quantizer's job.
    """
    if scheme.is_float:
        return {"weight": convert_float(raw, src_dtype, scheme.scale_dtype, threads=threads, name=name)}
    r = check_recipe(recipe, scheme, name)
    if r.fused:
        return quantize(raw, src_dtype, scheme, threads=threads, name=name)
    values = recipe_values(raw, src_dtype, scheme, r, context or RecipeContext(name=name), name)
    return pack(values, scheme, threads=threads, name=name)
