"""Where each checkpoint tensor goes in the GGUF and which ggml type it is written as.

The plan is made from ``source.tensor_infos()`` before any data is read, so the header can be
written first. Defaults follow llama.cpp: 1-D tensors (norms, rope factors) stay F32; for our own
schemes every matrix takes the scheme's type (like ``convert_hf_to_gguf --outtype``), and a
per-tensor override (``tensor_types="token_embd=Q8_0,output=Q6_K"``, any ggml type: those our
kernel does not write are made by ggml's quantizer) changes single tensors. :mod:`.plan` builds
the whole export's plan (policies, budgets, llama.cpp's K-quant mixes) on top of this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.model.config import PhiConfig
from phi_quant.model.tensors import TensorInfo, TensorRole

from .constants import BLOCK_SIZES, GGMLType, TensorName
from .gguf_file import TensorSlot

__all__ = ["PlannedTensor", "gguf_name", "choose_type", "plan_tensors", "override_matches", "parse_tensor_types", "rope_factor_slots"]

_ROLE_NAMES = {
    TensorRole.EMBED: TensorName.TOKEN_EMBD,
    TensorRole.ATTN_NORM: TensorName.ATTN_NORM,
    TensorRole.QKV: TensorName.ATTN_QKV,
    TensorRole.O: TensorName.ATTN_OUTPUT,
    TensorRole.FFN_NORM: TensorName.FFN_NORM,
    TensorRole.GATE_UP: TensorName.FFN_UP,
    TensorRole.DOWN: TensorName.FFN_DOWN,
    TensorRole.FINAL_NORM: TensorName.OUTPUT_NORM,
    TensorRole.LM_HEAD: TensorName.OUTPUT,
}


def gguf_name(role: TensorRole, layer: int | None) -> str:
    """The GGUF tensor name for a fused-stream role (llama.cpp keeps qkv and gate_up fused)."""
    try:
        template = _ROLE_NAMES[role]
    except KeyError:
        raise UnsupportedPrecisionError(f"tensor role {role.value} has no place in a phi3 GGUF (stream the fused tensors)") from None
    return template.format(layer=layer)


@dataclass(frozen=True)
class PlannedTensor:
    """One source tensor, its GGUF slot and why it got its type."""

    info: TensorInfo
    slot: TensorSlot
    reason: str = ""


def parse_tensor_types(spec: str | dict | None) -> dict[str, str]:
    """``"token_embd=Q8_0,output=F16"`` (or a dict) -> {pattern: TYPE}; see :func:`override_matches`.
    Regular expressions may not contain ``,`` or ``=`` in the string form."""
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, dict) else (p.split("=", 1) for p in str(spec).split(",") if p.strip())
    out = {}
    for item in items:
        try:
            pattern, type_name = item
        except ValueError:
            raise UnsupportedPrecisionError(f"tensor_types entry {item!r}: write NAME=TYPE, e.g. token_embd=Q8_0") from None
        type_name = type_name.strip().upper()
        if type_name not in GGMLType.__members__:
            raise UnsupportedPrecisionError(
                f"tensor_types: unknown type {type_name!r} for {pattern!r}; use one of {', '.join(GGMLType.__members__)}"
            )
        out[pattern.strip()] = type_name
    return out


def override_matches(pattern: str, name: str) -> bool:
    """A bare tensor name (letters, digits, ``_`` and ``.``) matches exactly, with or without
    ``.weight``; anything else is a regular expression searched in the full name."""
    if re.fullmatch(r"[A-Za-z0-9_.]+", pattern):
        return pattern in (name, name[: -len(".weight")] if name.endswith(".weight") else name)
    return re.search(pattern, name) is not None


def _fits(ggml_type: GGMLType, shape: tuple[int, ...]) -> bool:
    return shape[-1] % BLOCK_SIZES[ggml_type][0] == 0


def choose_type(info: TensorInfo, matrix_type: str, overrides: dict[str, str]) -> tuple[PlannedTensor, set[str]]:
    """One tensor's slot: norms F32, matrices ``matrix_type`` unless an override matches.

    Returns the plan entry and the override patterns that matched it. A matrix whose row length
    is not a multiple of the block falls back to F16, said in ``reason``.
    """
    name = gguf_name(info.role, info.layer)
    if info.role.is_norm:
        return PlannedTensor(info, TensorSlot(name, info.shape, GGMLType.F32), "1-D: F32"), set()
    matched = {p for p in overrides if override_matches(p, name)}
    type_name, reason = matrix_type, "scheme default"
    if matched:
        type_name, reason = overrides[sorted(matched, key=list(overrides).index)[0]], "override"
    ggml_type = GGMLType[type_name]
    if not _fits(ggml_type, info.shape):
        reason = f"row length {info.shape[-1]} not a multiple of the {type_name} block: F16 fallback"
        ggml_type = GGMLType.F16
    return PlannedTensor(info, TensorSlot(name, info.shape, ggml_type), reason), matched


def plan_tensors(infos: list[TensorInfo], matrix_type: str, overrides: dict[str, str]) -> list[PlannedTensor]:
    """:func:`choose_type` for every tensor; an override that matches no tensor is refused."""
    plan, used = [], set()
    for info in infos:
        entry, matched = choose_type(info, matrix_type, overrides)
        plan.append(entry)
        used |= matched
    unused = [p for p in overrides if p not in used]
    if unused:
        names = ", ".join(p.slot.name for p in plan[:3])
        raise UnsupportedPrecisionError(f"tensor_types: {', '.join(unused)} matched no tensor (names look like {names}, ...)")
    return plan


def rope_factor_slots(config: PhiConfig) -> list[TensorSlot]:
    """The LongRoPE factor tensors (F32, rotary_dim/2 entries), empty for plain rope."""
    if not config.rope.is_longrope:
        return []
    n = config.rope.rotary_dim // 2
    return [TensorSlot(TensorName.ROPE_FACTORS_LONG, (n,), GGMLType.F32), TensorSlot(TensorName.ROPE_FACTORS_SHORT, (n,), GGMLType.F32)]
