"""How one tensor is stored: the scheme names, encoding through the core kernel, and decoding.

Each tensor becomes one small safetensors file of named arrays:

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
from phi_quant.model.tensors import SourceTensor
from phi_quant.types import ExportOptions, QuantizedTensor

__all__ = ["Scheme", "DEFAULT_SCHEMES", "resolve_scheme", "encode", "decode"]

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
    if group < 16 or group & (group - 1):
        raise UnsupportedPrecisionError(f"group size {group} must be a power of two of at least 16")
    return Scheme(base.precision, base.bits, group, symmetric)


def encode(tensor: SourceTensor, scheme: Scheme) -> QuantizedTensor:
    """Quantize one source tensor; refuses NaN/Inf with an error naming the tensor."""
    w = tensor.to_float32()
    if not np.isfinite(w).all():
        raise BadWeightsError(f"tensor {tensor.name} holds NaN or Inf values; the checkpoint is damaged, "
                              "re-download or re-save it")
    stored = "fp32" if w.ndim == 1 else scheme.name
    if stored == "fp32":
        arrays = {"weight": w}
    elif stored == "fp16":
        arrays = {"weight": w.astype(np.float16)}
    elif stored == "bf16":
        arrays = {"weight": tensor.raw().copy() if tensor.dtype == "bf16" else quant.to_bfloat16(w, "f32")}
    else:
        blocks, scales, zero_points = quant.matmulnbits_quantize(
            w, bits=scheme.bits, block_size=scheme.group_size, symmetric=scheme.symmetric)
        arrays = {"blocks": blocks, "scales": np.asarray(scales, np.float32)}
        if zero_points is not None:
            arrays["zero_points"] = zero_points
    shape = tuple(tensor.shape)
    return QuantizedTensor(tensor.name, stored, shape, arrays, dequantize=lambda: decode(arrays, stored, shape))


def decode(arrays: dict[str, np.ndarray], scheme: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 weights back from what :func:`encode` stored."""
    if scheme == "bf16":
        return (arrays["weight"].astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if "weight" in arrays:
        return arrays["weight"].astype(np.float32).reshape(shape)
    bits = int(scheme[3])
    blocks, scales = arrays["blocks"], arrays["scales"]
    rows, n_blocks, group = blocks.shape[0], blocks.shape[1], blocks.shape[2] * 8 // bits
    q = _unpack(blocks, bits).reshape(rows, n_blocks, group).astype(np.float32)
    if "zero_points" in arrays:
        zero = _unpack(arrays["zero_points"], bits)[:, :n_blocks].astype(np.float32)
    else:
        zero = np.full((rows, n_blocks), 2 ** (bits - 1), np.float32)
    w = (q - zero[..., None]) * scales[..., None]
    return w.reshape(rows, n_blocks * group)[:, : shape[-1]].reshape(shape)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 -> one value per element; for 4 bits the low nibble comes first."""
    if bits == 8:
        return packed
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
