"""Recipes that use calibration data, and how recipe names combine with ``+``.

Two calibrated parts exist, and each combines with one data-free value rule:

- ``awq`` scales the model's channels before quantization (activation-aware scaling folded into
  the tensor stream by :mod:`phi_quant.calib`, so the exported graph is unchanged); the values
  are then chosen by the rule (``awq`` = ``awq+rtn``, ``awq+clip``, ``awq+hqq``) or by GPTQ
  (``awq+gptq``);
- ``gptq`` chooses codes with GPTQ's error compensation, each group's scale by the rule
  (``gptq`` = ``gptq+rtn``, ``gptq+clip``, ``gptq+hqq``).

The order of the parts in a name does not matter (``gptq+awq`` is ``awq+gptq``); a part may
carry parameters after a colon: ``gptq:act_order=false,damp=0.02``, ``awq:grid=10,duo=false``.
With calibration, clip and hqq weight their errors by the calibrated mean x² of each input channel
(the importance), and ggml's own quantizer gets the same numbers as its importance matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import BadInputError
from ..scheme import Scheme
from ..values import QuantValues
from .base import Recipe, RecipeContext
from .gptq import GPTQ

__all__ = ["Calibrated", "CALIBRATED_PARTS", "parse_recipe", "is_calibrated"]

#: The parts of a recipe name that need calibration data.
CALIBRATED_PARTS = ("awq", "gptq")

_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_PARAMS: dict[str, dict[str, type]] = {"awq": {"grid": int, "duo": bool},
                                       "gptq": {"act_order": bool, "damp": float, "block": int}}


def is_calibrated(recipe: Recipe) -> bool:
    """True when ``recipe`` needs calibration statistics (the core calibrates before export)."""
    return bool(getattr(recipe, "needs_calibration", False))


class Calibrated(Recipe):
    """AWQ scaling (applied to the stream by the core) with a value rule (rtn, clip, hqq or gptq)."""

    needs_calibration = True
    uses_importance = True

    def __init__(self, rule: Recipe, awq: bool = True, grid: int = 20, duo: bool = True):
        self.rule = rule
        self.awq = bool(awq)
        self.grid, self.duo = int(grid), bool(duo)
        parts = (["awq"] if self.awq else []) + ([] if rule.name == "rtn" else [rule.name])
        self.name = "+".join(parts) or rule.name
        self.fused = rule.fused
        self.summary = f"AWQ activation-aware scaling folded into the model, then {rule.name}"
        if hasattr(rule, "chunk_elements"):
            self.chunk_elements = rule.chunk_elements

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "awq": {"grid": self.grid, "duo": self.duo}, "rule": self.rule.describe()}

    def refusal(self, scheme: Scheme) -> str | None:
        return self.rule.refusal(scheme)

    def transform(self, w: np.ndarray, context: RecipeContext) -> np.ndarray:
        return self.rule.transform(w, context)

    def values(self, w: np.ndarray, scheme: Scheme, context: RecipeContext) -> QuantValues:
        return self.rule.values(w, scheme, context)


def _split(part: str) -> tuple[str, dict[str, Any]]:
    name, _, raw = part.partition(":")
    name = name.strip()
    params: dict[str, Any] = {}
    if raw.strip():
        allowed = _PARAMS.get(name)
        if allowed is None:
            raise BadInputError(f"recipe part {name!r} takes no parameters (only awq and gptq do)")
        for item in raw.split(","):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip().lower()
            if not sep or key not in allowed:
                raise BadInputError(f"{name} parameter {item.strip()!r}: expected key=value with key one of "
                                    f"{', '.join(allowed)}")
            kind = allowed[key]
            try:
                params[key] = _BOOL[value] if kind is bool else kind(value)
            except (KeyError, ValueError):
                raise BadInputError(f"{name} parameter {key}={value!r} is not a valid {kind.__name__}") from None
    return name, params


def parse_recipe(text: str, data_free: dict[str, type[Recipe]]) -> Recipe:
    """The recipe a (possibly combined) name describes; ``data_free`` maps rule names to classes."""
    parts = [p for p in text.strip().lower().split("+")]
    if any(not p.strip() for p in parts):
        raise BadInputError(f"recipe {text!r} has an empty part; combine names with '+', e.g. awq+gptq")
    seen: dict[str, dict[str, Any]] = {}
    rule_name = None
    for part in parts:
        name, params = _split(part)
        if name in seen or (name == rule_name):
            raise BadInputError(f"recipe {text!r} names {name} twice")
        if name in CALIBRATED_PARTS:
            seen[name] = params
        elif name in data_free:
            if rule_name is not None:
                raise BadInputError(f"recipe {text!r} combines two value rules ({rule_name}, {name}); "
                                    "a recipe has one, optionally with awq and/or gptq")
            rule_name = name
        else:
            raise BadInputError(f"unknown recipe part {name!r} in {text!r}; choose from: "
                                f"{', '.join((*data_free, *CALIBRATED_PARTS))} (combined with '+')")
    rule = data_free[rule_name or "rtn"]()
    if "gptq" in seen:
        rule = GPTQ(rule, **seen["gptq"])
    if "awq" in seen:
        return Calibrated(rule, awq=True, **seen["awq"])
    return rule
