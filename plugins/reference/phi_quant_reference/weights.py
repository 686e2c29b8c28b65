"""How one tensor is stored: the scheme names, encoding through the core, and decoding.

The backend's part is the per-tensor scheme (:func:`tensor_scheme`, a core
:class:`~phi_quant.quant.scheme.Scheme`); the values come from the core's recipe and the bytes
from its kernel (:func:`phi_quant.quant.encode.encode`). Each tensor becomes one small
safetensors file of named arrays:

- floats (``fp32``, ``fp16``, ``bf16``): ``{"weight": ...}``; bf16 is kept as its uint16 bit
  pattern, since numpy has no bfloat16.
- integers (``int8``, ``int4``): ONNX MatMulNBits blocks from :mod:`phi_quant.quant`:
  ``{"blocks": uint8 [N, K/g, g*bits/8], "scales": f32 [N, K/g]}`` plus ``"zero_points"`` when
  asymmetric. A weight is ``(q - zero_point) * scale``.

1-D tensors (the RMSNorm weights) stay float32 in every scheme: they are tiny and sensitive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from phi_quant import quant
from phi_quant.errors import BadWeightsError, UnsupportedPrecisionError
from phi_quant.model.checks import check_finite
from phi_quant.model.tensors import SourceTensor, TensorInfo
from phi_quant.quant import scheme as core
from phi_quant.quant.encode import encode as core_encode
from phi_quant.quant.plan import recipe_context
from phi_quant.quant.recipes import get_recipe
from phi_quant.types import ExportOptions, QuantizedTensor

__all__ = ["Scheme", "DEFAULT_SCHEMES", "resolve_scheme", "tensor_scheme", "encode", "decode"]

_INT_SCHEME = re.compile(r"^int(?P<bits>[48])_(?P<kind>sym|asym)_g(?P<group>\d+)$")


@dataclass(frozen=True)
class Scheme:
    """A precision made concrete: float dtype, or integer bits with group size and symmetry."""

    precision: str
    bits: int | None = None
    group_size: int | None = None
    symmetric: bool = False

    @property
    def name(self) -> str:
        if self.bits is None:
            return self.precision
        return f"int{self.bits}_{'sym' if self.symmetric else 'asym'}_g{self.group_size}"


DEFAULT_SCHEMES = {
    "fp32": Scheme("fp32"),
    "fp16": Scheme("fp16"),
    "bf16": Scheme("bf16"),
    "int8": Scheme("int8", bits=8, group_size=32),
    "int4": Scheme("int4", bits=4, group_size=32),
}


def resolve_scheme(options: ExportOptions) -> Scheme:
    """The scheme for ``options``, or :class:`UnsupportedPrecisionError` saying what is offered."""
    base = DEFAULT_SCHEMES.get(options.precision)
    if base is None:
        raise UnsupportedPrecisionError(
            f"the reference backend has no precision {options.precision!r}; choose one of {', '.join(DEFAULT_SCHEMES)}")
    if base.bits is None:
        if options.scheme not in (None, base.name) or options.group_size or options.symmetric is not None:
            raise UnsupportedPrecisionError(f"{base.name} takes no scheme, group size or symmetry option")
        return base
    group, symmetric = options.group_size or base.group_size, bool(options.symmetric)
    if options.scheme:
        m = _INT_SCHEME.match(options.scheme)
        if not m or int(m["bits"]) != base.bits:
            raise UnsupportedPrecisionError(
                f"unknown {base.precision} scheme {options.scheme!r}; write it as int{base.bits}_sym_g64 or int{base.bits}_asym_g32")
        group, symmetric = int(m["group"]), m["kind"] == "sym"
    if group not in quant.MATMULNBITS_BLOCK_SIZES:
        raise UnsupportedPrecisionError(f"group size {group} is not one of {quant.MATMULNBITS_BLOCK_SIZES}")
    return Scheme(base.precision, base.bits, group, symmetric)


def tensor_scheme(info: TensorInfo, scheme: Scheme) -> core.Scheme:
    """The core scheme of one tensor: norms float32, matrices the precision's scheme."""
    if len(info.shape) == 1 or scheme.bits is None:
        if len(info.shape) == 1:
            return core.Scheme.keep_float("f32", "fp32")
        return core.Scheme.keep_float({"fp16": "f16", "bf16": "bf16"}.get(scheme.precision, "f32"), scheme.name)
    return core.Scheme.matmulnbits(scheme.bits, scheme.group_size, scheme.symmetric, "f32")


def encode(tensor: SourceTensor, scheme: Scheme, recipe: str | None = None, source=None) -> QuantizedTensor:
    """Quantize one source tensor; refuses NaN/Inf with an error naming the tensor."""
    check_finite(tensor)  # on the stored bytes, without a float copy
    cs = tensor_scheme(tensor.info(), scheme)
    r = get_recipe(recipe)
    arrays = core_encode(tensor.raw(), tensor.dtype, cs, r, context=recipe_context(r, tensor.info(), source), name=tensor.name)
    if cs.is_float and cs.scale_dtype == "f16" and not np.isfinite(arrays["weight"]).all():
        raise BadWeightsError(f"tensor {tensor.name} has values beyond the fp16 range; export bf16 or fp32")
    if "B" in arrays:
        arrays = {"blocks": arrays.pop("B"), **arrays}
    stored, shape = "fp32" if len(tensor.shape) == 1 else scheme.name, tuple(tensor.shape)
    return QuantizedTensor(tensor.name, stored, shape, arrays, dequantize=lambda: decode(arrays, stored, shape),
                           meta={"recipe": r.name})


def decode(arrays: dict[str, np.ndarray], scheme: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 weights back from what :func:`encode` stored."""
    if scheme == "bf16":
        return quant.to_float32(arrays["weight"], "bf16").reshape(shape)
    if "weight" in arrays:
        return arrays["weight"].astype(np.float32).reshape(shape)
    m = _INT_SCHEME.match(scheme)
    return quant.matmulnbits_dequantize(arrays["blocks"], arrays["scales"], arrays.get("zero_points"),
                                        bits=int(m["bits"]), block_size=int(m["group"]), k=shape[-1]).reshape(shape)
