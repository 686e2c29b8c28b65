"""Where each checkpoint tensor goes in the GGUF and which ggml type it is written as.

The plan is made from ``source.tensor_infos()`` before any data is read, so the header can be
written first. Defaults follow llama.cpp: 1-D tensors (norms, biases, rope factors) and the
mixture-of-experts router stay F32; for our own schemes every other matrix takes the scheme's
type (like ``convert_hf_to_gguf --outtype``), and a per-tensor override
(``tensor_types="token_embd=Q8_0,output=Q6_K"``, any ggml type: those our kernel does not write
are made by ggml's quantizer) changes single tensors. :mod:`.plan` builds the whole export's plan
(policies, budgets, llama.cpp's K-quant mixes) on top of this.

A layer's experts share one stacked GGUF tensor per matrix (``ffn_gate_exps`` [E, inter,
hidden], ...): the plan gives that slot every expert's source tensor in expert order, and the
writer appends each expert's rows the moment they stream in. The core's stream order (every
expert of one matrix, in order, before the next matrix) is what makes that possible; the plan
checks it rather than trusting it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from phi_quant.errors import UnsupportedModelError, UnsupportedPrecisionError
from phi_quant.model.config import PhiConfig
from phi_quant.model.tensors import TensorInfo, TensorRole

from .constants import BLOCK_SIZES, GGMLType, TensorName
from .gguf_file import TensorSlot

__all__ = ["PlannedTensor", "gguf_name", "choose_type", "plan_tensors", "override_matches", "parse_tensor_types",
           "rope_factor_slots", "slots_by_source", "stacked_groups"]

_ROLE_NAMES = {
    TensorRole.EMBED: TensorName.TOKEN_EMBD,
    TensorRole.ATTN_NORM: TensorName.ATTN_NORM,
    TensorRole.ATTN_NORM_BIAS: TensorName.ATTN_NORM_BIAS,
    TensorRole.QKV: TensorName.ATTN_QKV,
    TensorRole.Q: TensorName.ATTN_Q,
    TensorRole.Q_BIAS: TensorName.ATTN_Q_BIAS,
    TensorRole.K: TensorName.ATTN_K,
    TensorRole.K_BIAS: TensorName.ATTN_K_BIAS,
    TensorRole.V: TensorName.ATTN_V,
    TensorRole.V_BIAS: TensorName.ATTN_V_BIAS,
    TensorRole.O: TensorName.ATTN_OUTPUT,
    TensorRole.O_BIAS: TensorName.ATTN_OUTPUT_BIAS,
    TensorRole.FFN_NORM: TensorName.FFN_NORM,
    TensorRole.FFN_NORM_BIAS: TensorName.FFN_NORM_BIAS,
    TensorRole.GATE_UP: TensorName.FFN_UP,
    TensorRole.DOWN: TensorName.FFN_DOWN,
    TensorRole.ROUTER: TensorName.FFN_GATE_INP,
    TensorRole.FINAL_NORM: TensorName.OUTPUT_NORM,
    TensorRole.FINAL_NORM_BIAS: TensorName.OUTPUT_NORM_BIAS,
    TensorRole.LM_HEAD: TensorName.OUTPUT,
    TensorRole.LM_HEAD_BIAS: TensorName.OUTPUT_BIAS,
}
#: An expert's matrices, each stacked with the same matrix of the layer's other experts.
_EXPERT_NAMES = {
    TensorRole.GATE: TensorName.FFN_GATE_EXPS,
    TensorRole.UP: TensorName.FFN_UP_EXPS,
    TensorRole.DOWN: TensorName.FFN_DOWN_EXPS,
}


def gguf_name(role: TensorRole, layer: int | None, expert: int | None = None) -> str:
    """The GGUF tensor name for a role of the stream (llama.cpp keeps phi3's qkv and gate_up
    fused); an expert's matrix names the stacked tensor it is one slice of."""
    table = _EXPERT_NAMES if expert is not None else _ROLE_NAMES
    try:
        template = table[role]
    except KeyError:
        what = f"expert tensor {role.value}" if expert is not None else f"tensor role {role.value}"
        raise UnsupportedPrecisionError(f"{what} has no place in a llama.cpp GGUF (stream the fused tensors)") from None
    return template.format(layer=layer)


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: its slot, the source tensors written into it in order, and why it got its type.

    A plain tensor has one source; a stacked expert tensor has one per expert, expert 0 first.
    """

    infos: tuple[TensorInfo, ...]
    slot: TensorSlot
    reason: str = ""

    @property
    def info(self) -> TensorInfo:
        """The (first) source tensor."""
        return self.infos[0]


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


def choose_type(info: TensorInfo, matrix_type: str, overrides: dict[str, str], *,
                infos: tuple[TensorInfo, ...] | None = None) -> tuple[PlannedTensor, set[str]]:
    """One GGUF tensor's slot: 1-D tensors and the router F32, matrices ``matrix_type`` unless an
    override matches. ``infos``: every source tensor of a stacked slot (default: ``info`` alone).

    Returns the plan entry and the override patterns that matched it. A matrix whose row length
    is not a multiple of the block falls back to F16, said in ``reason``.
    """
    infos = infos or (info,)
    name = gguf_name(info.role, info.layer, info.expert)
    shape = (len(infos), *info.shape) if info.expert is not None else info.shape
    if not info.role.is_matmul:
        return PlannedTensor(infos, TensorSlot(name, shape, GGMLType.F32), "1-D: F32"), set()
    matched = {p for p in overrides if override_matches(p, name)}
    type_name, reason = matrix_type, "scheme default"
    if info.role is TensorRole.ROUTER:
        type_name, reason = "F32", "router: F32, as llama.cpp keeps ffn_gate_inp"
    if matched:
        type_name, reason = overrides[sorted(matched, key=list(overrides).index)[0]], "override"
    ggml_type = GGMLType[type_name]
    if not _fits(ggml_type, shape):
        reason = f"row length {shape[-1]} not a multiple of the {type_name} block: F16 fallback"
        ggml_type = GGMLType.F16
    return PlannedTensor(infos, TensorSlot(name, shape, ggml_type), reason), matched


def stacked_groups(infos: list[TensorInfo]) -> list[tuple[TensorInfo, ...]]:
    """Source tensors per GGUF tensor, in stream order; refuses a stream that interleaves a stack."""
    groups: dict[str, list[TensorInfo]] = {}
    last = None
    for info in infos:
        name = gguf_name(info.role, info.layer, info.expert)
        members = groups.setdefault(name, [])
        if members and (last != name or info.expert != members[-1].expert + 1 or info.shape != members[0].shape):
            raise UnsupportedModelError(
                f"{info.name} arrives out of order for the stacked {name} (after expert {members[-1].expert}): the "
                "stream must bring each matrix's experts together and in order (see docs/architectures.md)"
            )
        if not members and info.expert not in (None, 0):
            raise UnsupportedModelError(f"{name} would start with expert {info.expert}; the stream must start at 0")
        members.append(info)
        last = name
    return [tuple(m) for m in groups.values()]


def plan_tensors(infos: list[TensorInfo], matrix_type: str, overrides: dict[str, str]) -> list[PlannedTensor]:
    """:func:`choose_type` for every GGUF tensor; an override that matches no tensor is refused."""
    plan, used = [], set()
    for members in stacked_groups(infos):
        entry, matched = choose_type(members[0], matrix_type, overrides, infos=members)
        plan.append(entry)
        used |= matched
    unused = [p for p in overrides if p not in used]
    if unused:
        names = ", ".join(p.slot.name for p in plan[:3])
        raise UnsupportedPrecisionError(f"tensor_types: {', '.join(unused)} matched no tensor (names look like {names}, ...)")
    return plan


def slots_by_source(plan: list[PlannedTensor]) -> dict[str, PlannedTensor]:
    """Source tensor name -> the plan entry it is written into."""
    return {info.name: entry for entry in plan for info in entry.infos}


def rope_factor_slots(config: PhiConfig) -> list[TensorSlot]:
    """The LongRoPE factor tensors (F32, rotary_dim/2 entries), empty for plain rope."""
    if not config.rope.is_longrope:
        return []
    n = config.rope.rotary_dim // 2
    return [TensorSlot(TensorName.ROPE_FACTORS_LONG, (n,), GGMLType.F32), TensorSlot(TensorName.ROPE_FACTORS_SHORT, (n,), GGMLType.F32)]
