"""The per-tensor plan every backend makes before writing: one :class:`Scheme` per tensor.

A backend turns the checkpoint's tensor list and the user's options into a :class:`TensorPlan`
(shapes only, before any data is read, so headers can be written first); its ``export`` and its
``quantize`` hook both encode every tensor through that plan (:func:`phi_quant.quant.encode.encode`),
so they cannot disagree. The plan also says what the output will weigh: every tensor's scheme,
bytes and bits per weight go into the manifest and the model card.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from phi_quant.model.tensors import TensorInfo, TensorRole
from phi_quant.quant.recipes import Recipe, RecipeContext
from phi_quant.quant.scheme import Scheme

__all__ = ["PlannedTensor", "TensorPlan", "recipe_context", "feeding_norm", "cached_plan"]


@dataclass(frozen=True)
class PlannedTensor:
    """One source tensor, where it goes in the output and how it is stored."""

    info: TensorInfo
    output: str  # the tensor's name in the output (GGUF name, module path, initializer, ...)
    scheme: Scheme
    reason: str = ""  # why this scheme (default, override, fallback, policy, budget)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def nbytes(self) -> int:
        return self.scheme.nbytes(tuple(self.info.shape))

    def record(self) -> dict[str, Any]:
        """JSON-ready line of the manifest's tensor table."""
        out = {"name": self.info.name, "output": self.output, "shape": list(self.info.shape), **self.scheme.describe(),
               "bytes": self.nbytes, "bits_per_weight": round(self.scheme.bits_per_weight(tuple(self.info.shape)), 4)}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class TensorPlan:
    """Every tensor's plan entry, in stream order, plus what the user should know."""

    tensors: list[PlannedTensor]
    recipe: str = "rtn"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_name = {p.info.name: p for p in self.tensors}

    def __getitem__(self, name: str) -> PlannedTensor:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self.tensors)

    @property
    def parameters(self) -> int:
        return sum(p.info.numel for p in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        """Bits of stored tensor data per parameter (every tensor, norms included)."""
        return 8.0 * self.nbytes / max(self.parameters, 1)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.tensors:
            out[p.scheme.name] = out.get(p.scheme.name, 0) + 1
        return dict(sorted(out.items()))

    def summary(self, digests: dict[str, str] | None = None) -> dict[str, Any]:
        """The manifest's ``quantization`` block: recipe, totals and one record per tensor."""
        records = []
        for p in self.tensors:
            r = p.record()
            if digests and p.info.name in digests:
                r["sha256"] = digests[p.info.name]
            records.append(r)
        return {"recipe": self.recipe, "bits_per_weight": round(self.bits_per_weight, 4), "tensor_bytes": self.nbytes,
                "parameters": self.parameters, "schemes": self.counts(), "tensors": records}


#: The RMSNorm whose output each matmul multiplies (data-free input scale of its channels).
_FED_BY = {
    TensorRole.QKV: TensorRole.ATTN_NORM, TensorRole.Q: TensorRole.ATTN_NORM, TensorRole.K: TensorRole.ATTN_NORM,
    TensorRole.V: TensorRole.ATTN_NORM, TensorRole.GATE_UP: TensorRole.FFN_NORM, TensorRole.GATE: TensorRole.FFN_NORM,
    TensorRole.UP: TensorRole.FFN_NORM, TensorRole.LM_HEAD: TensorRole.FINAL_NORM,
}


def feeding_norm(info: TensorInfo, tied: bool) -> tuple[TensorRole, int | None] | None:
    """(role, layer) of the norm feeding this matmul's input, or None (o_proj, down_proj, untied embedding)."""
    role = TensorRole(info.role)
    if role == TensorRole.EMBED:
        return (TensorRole.FINAL_NORM, None) if tied else None
    norm = _FED_BY.get(role)
    if norm is None:
        return None
    return norm, (None if norm == TensorRole.FINAL_NORM else info.layer)


def recipe_context(recipe: Recipe, info: TensorInfo, source: Any = None) -> RecipeContext:
    """What ``recipe`` may know about ``info`` besides its weights: the data-free importance of its
    input channels (the square of the RMSNorm gain that scales them) when the recipe asks for it
    and ``source`` can provide the norm; it is read here, a 1-D tensor of the same layer.

    A recipe that needs calibration (``awq``, ``gptq``, ...) gets the calibrated statistics of the
    tensor's input instead (importance = mean x², ``stats["calibration"]`` for GPTQ's XᵀX), from a
    :class:`phi_quant.calib.CalibratedSource`, the only kind of source such a recipe can use."""
    if getattr(recipe, "needs_calibration", False):
        return _calibrated_context(recipe, info, source)
    importance = None
    if getattr(recipe, "uses_importance", False) and source is not None:
        found = feeding_norm(info, bool(getattr(source.config, "tie_word_embeddings", False)))
        if found is not None:
            gain = source.tensor(*found).to_float32()
            importance = np.ascontiguousarray(gain.astype(np.float32) ** 2)
    return RecipeContext(name=info.name, role=TensorRole(info.role).value, layer=info.layer, importance=importance)


_PLANS: dict[tuple, tuple[Any, Any]] = {}
_MAX_PLANS = 16


def cached_plan(backend: str, source: Any, options: Any, build: Callable[[], Any]) -> Any:
    """``build()`` once per (backend, checkpoint object, options) in this process.

    A plan may cost a pass over the weights (a size budget measures every tensor), and the
    ``quantize`` hook is called once per tensor: both it and ``export`` get the same plan here.
    """
    key = (backend, id(source), repr(options))
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is source:
        return hit[1]
    value = build()
    _PLANS[key] = (source, value)
    while len(_PLANS) > _MAX_PLANS:
        _PLANS.pop(next(iter(_PLANS)))
    return value


def _calibrated_context(recipe: Recipe, info: TensorInfo, source: Any) -> RecipeContext:
    view = getattr(source, "calibration", None)
    if view is None:
        from ..errors import UnsupportedPrecisionError

        raise UnsupportedPrecisionError(
            f"recipe {recipe.name} needs calibration statistics, which only the core's calibrated view of the "
            "checkpoint carries (phi_quant.calib.calibrated_source; convert and the quantize facade build it)")
    stats = view.for_tensor(info)
    base = RecipeContext(name=info.name, role=TensorRole(info.role).value, layer=info.layer)
    if stats is None or stats.count == 0:
        return base
    return RecipeContext(name=base.name, role=base.role, layer=base.layer,
                         importance=np.ascontiguousarray(stats.mean_sq, np.float32), stats={"calibration": stats})

