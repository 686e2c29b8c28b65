"""Which tensors are quantized and how, decided from shapes alone (before any data is read).

mlx-lm's default rule (``quantize_model``): every module that can be quantized
(``nn.Linear``, ``nn.Embedding``: so the embedding too, and ``lm_head`` when untied; a tied model
has only the embedding, used as the output layer through ``as_linear``) is quantized with the
global bits and group size, except when its input dimension is not a multiple of the group
size: then it stays unquantized. Norms are never quantized. Per-module overrides
(``--option overrides=down_proj=8,lm_head=8:32,embed_tokens=off``) change bits, group size or
switch quantization off for the modules whose path matches.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.model.tensors import TensorInfo, TensorRole

from .constants import (
    DEFAULT_GROUP_SIZE,
    GROUP_SIZES,
    PRECISION_BITS,
    PRECISION_DTYPE,
    QUANT_MODE,
    SAFETENSORS_DTYPE,
    packed_width,
    parameter_path,
)
from .safetensors_stream import TensorSpec

__all__ = ["FLOAT_DTYPES", "resolve_float_dtype", "QuantParams", "PlannedTensor", "Override", "parse_overrides", "plan_tensors", "resolve_group_size"]

_OFF = ("off", "none", "no", "false", "0")


@dataclass(frozen=True)
class QuantParams:
    bits: int
    group_size: int

    def as_config(self) -> dict:
        return {"group_size": self.group_size, "bits": self.bits, "mode": QUANT_MODE}


@dataclass(frozen=True)
class Override:
    """``pattern=bits[:group]`` or ``pattern=off``; the pattern matches a module path's tail or a glob."""

    pattern: str
    params: QuantParams | None  # None: keep this module unquantized

    def matches(self, path: str) -> bool:
        p = self.pattern
        return path == p or path.endswith("." + p) or fnmatch.fnmatchcase(path, p)


@dataclass(frozen=True)
class PlannedTensor:
    """One source tensor and what the output holds for it.

    An expert's matrix (``info.expert`` set, ``experts`` > 0) is one slice of its module's
    stacked ``[experts, out, in]`` tensors (mlx-lm's SwitchLinear): the first expert plans the
    stacked tensors, every expert writes its slice at :meth:`slice_offsets`.
    """

    info: TensorInfo
    module: str
    quant: QuantParams | None
    dtype: str  # safetensors dtype of the float parameter(s): the weight, or scales/biases
    reason: str = ""  # why a quantizable module was left unquantized (for the notes)
    param: str = "weight"  # the module's parameter this tensor is ("bias": a bias or LayerNorm shift)
    experts: int = 0  # experts stacked in this module's tensors (0: not stacked)

    def _slice_specs(self) -> list[TensorSpec]:
        shape = tuple(self.info.shape)
        if self.quant is None:
            return [TensorSpec(f"{self.module}.{self.param}", self.dtype, shape)]
        rows, cols = shape
        groups = cols // self.quant.group_size
        return [
            TensorSpec(f"{self.module}.weight", "U32", (rows, packed_width(cols, self.quant.bits))),
            TensorSpec(f"{self.module}.scales", self.dtype, (rows, groups)),
            TensorSpec(f"{self.module}.biases", self.dtype, (rows, groups)),
        ]

    @property
    def specs(self) -> list[TensorSpec]:
        """The output tensors this source tensor plans (an expert other than the first: none)."""
        if not self.experts:
            return self._slice_specs()
        if self.info.expert:
            return []
        return [TensorSpec(s.name, s.dtype, (self.experts,) + s.shape) for s in self._slice_specs()]

    def slice_offsets(self) -> dict[str, int]:
        """Byte offset of this tensor's data inside each output tensor (an expert's slice: expert x slice bytes)."""
        expert = (self.info.expert or 0) if self.experts else 0
        return {s.name: expert * s.nbytes for s in self._slice_specs()}


def resolve_group_size(value: int | None) -> int:
    gs = DEFAULT_GROUP_SIZE if value is None else int(value)
    if gs not in GROUP_SIZES:
        raise UnsupportedPrecisionError(
            f"mlx group size {gs} is not offered; choose one of {', '.join(map(str, GROUP_SIZES))} (default {DEFAULT_GROUP_SIZE})"
        )
    return gs


def _parse_bits(text: str, where: str) -> int:
    try:
        bits = int(text)
    except ValueError:
        bits = -1
    if bits not in PRECISION_BITS.values():
        raise UnsupportedPrecisionError(f"override {where!r}: bits must be 4 or 8 (or 'off' to keep the module unquantized)")
    return bits


def parse_overrides(text: str | Iterable[str] | None, default_group_size: int) -> list[Override]:
    """Parse ``"down_proj=8,lm_head=8:32,embed_tokens=off"`` (a string, or a list of items)."""
    if not text:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        pattern, sep, value = item.partition("=")
        pattern, value = pattern.strip(), value.strip().lower()
        if not sep or not pattern or not value:
            raise UnsupportedPrecisionError(
                f"override {item!r} should look like MODULE=BITS[:GROUP] or MODULE=off, e.g. down_proj=8 or lm_head=8:32"
            )
        if value in _OFF:
            out.append(Override(pattern, None))
            continue
        bits_text, _, gs_text = value.partition(":")
        bits = _parse_bits(bits_text, item)
        gs = resolve_group_size(int(gs_text)) if gs_text else default_group_size
        out.append(Override(pattern, QuantParams(bits, gs)))
    return out


#: ``dtype`` option values (mlx-lm convert's ``--dtype``) -> safetensors dtype.
FLOAT_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def resolve_float_dtype(precision: str, dtype: str | None) -> str | None:
    """The dtype of scales, biases and unquantized tensors of an int export (None: the stored dtype)."""
    if dtype is None:
        return None
    if precision not in PRECISION_BITS:
        raise UnsupportedPrecisionError(f"the dtype option applies to int8/int4 exports; {precision} fixes the dtype itself")
    if str(dtype) not in FLOAT_DTYPES:
        raise UnsupportedPrecisionError(f"dtype {dtype!r}: choose one of {', '.join(FLOAT_DTYPES)}")
    return FLOAT_DTYPES[str(dtype)]


def _float_dtype(info: TensorInfo, precision: str, dtype: str | None) -> str:
    return PRECISION_DTYPE.get(precision) or dtype or SAFETENSORS_DTYPE[info.dtype]


def plan_tensors(
    infos: Iterable[TensorInfo],
    precision: str,
    group_size: int | None = None,
    overrides: list[Override] | None = None,
    dtype: str | None = None,
    tied: bool = False,
) -> list[PlannedTensor]:
    """Decide, for every tensor of the stream, its output names, dtypes and quantization.

    ``dtype`` (int exports only, e.g. ``"float16"``): cast every weight to it before quantizing,
    and store scales, biases and unquantized tensors in it (mlx-lm convert's ``--dtype``).
    ``tied``: the embedding is also the output layer, so a pattern for ``lm_head`` applies to it.
    """
    if precision not in PRECISION_DTYPE:
        raise UnsupportedPrecisionError(f"mlx has no precision {precision!r}; choose one of {', '.join(PRECISION_DTYPE)}")
    float_dtype = resolve_float_dtype(precision, dtype)
    gs = resolve_group_size(group_size)
    overrides = overrides or []
    if overrides and precision not in PRECISION_BITS:
        raise UnsupportedPrecisionError(
            f"per-module overrides apply to int8/int4 exports; {precision} keeps every tensor in {precision}"
        )
    default = QuantParams(PRECISION_BITS[precision], gs) if precision in PRECISION_BITS else None
    used = set()
    plan = []
    infos = list(infos)
    experts = Counter((i.role, i.layer) for i in infos if i.expert is not None)
    for info in infos:
        module, param = parameter_path(info.role, info.layer, info.expert)
        stacked = experts[(info.role, info.layer)] if info.expert is not None else 0
        out_dtype = _float_dtype(info, precision, float_dtype)
        if not info.role.is_matmul:
            plan.append(PlannedTensor(info, module, None, out_dtype, param=param))
            continue
        quant = default
        names = (module, "lm_head") if tied and info.role == TensorRole.EMBED else (module,)
        for i, ov in enumerate(overrides):
            if any(ov.matches(n) for n in names):
                quant = ov.params
                used.add(i)
        reason = ""
        if quant is not None and info.shape[-1] % quant.group_size:
            reason = f"input dim {info.shape[-1]} is not a multiple of group size {quant.group_size}"
            quant = None
        elif quant is None and default is not None:
            reason = "kept unquantized by an override"
        plan.append(PlannedTensor(info, module, quant, out_dtype, reason, experts=stacked))
    unused = [overrides[i].pattern for i in range(len(overrides)) if i not in used]
    if unused:
        raise UnsupportedPrecisionError(
            f"override pattern(s) {', '.join(unused)} match no module; module names look like "
            "model.embed_tokens, model.layers.0.self_attn.qkv_proj, mlp.gate_up_proj, mlp.down_proj, lm_head"
        )
    return plan
