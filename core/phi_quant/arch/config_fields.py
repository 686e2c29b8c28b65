"""Every ``config.json`` field an architecture reads, checked by type and range before any use.

A config from the Hub may say ``num_hidden_layers: "abc"``, ``num_attention_heads: 0``,
``hidden_size: [256]``, ``rope_scaling: "longrope"`` or ``num_hidden_layers: 1000000000``. Each
architecture module declares the fields it reads as a table of :class:`Field` (``FIELDS`` in
:mod:`phi_quant.arch.phi3`) and calls :func:`check_config` with it first thing in its
``parse_config``; the check goes through the shared accessor
:class:`~phi_quant.fields.Fields`, so every refusal names the file, the field, what it
found and what it expects, and the parsing that follows only computes with values of the right
type in a sane range. The ranges are generous bounds on what a model can be (the largest
published Phi has 40 layers and a 131072-token context), low enough that no size computed from
them can exhaust memory; the tensors actually present are checked against the config afterwards
(:mod:`phi_quant.model.tensor_check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedModelError
from ..fields import Fields

__all__ = ["Field", "ROPE_FIELDS", "check_architectures", "check_config", "check_heads", "MAX_CONTEXT"]

#: Largest context any config may declare (tables sized by it, such as ONNX's rotary caches, stay bounded).
MAX_CONTEXT = 1 << 20


@dataclass(frozen=True)
class Field:
    """One config field: its JSON kind, whether it must be present, and its range."""

    name: str
    kind: str  # "int" | "float" | "bool" | "str" | "object" | "token" | "tokens"
    required: bool = False
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # the minimum itself is excluded (a positive float)


#: Fields of ``rope_scaling`` and of transformers 5's ``rope_parameters``.
ROPE_FIELDS: tuple[Field, ...] = (
    Field("type", "str"),
    Field("rope_type", "str"),
    Field("rope_theta", "float", False, 0.0, 1e12, min_open=True),
    Field("partial_rotary_factor", "float", False, 0.0, 1.0, min_open=True),
    Field("factor", "float", False, 0.0, 1e6, min_open=True),
    Field("attention_factor", "float", False, 0.0, 1e3, min_open=True),
    Field("original_max_position_embeddings", "int", False, 2, MAX_CONTEXT),
)
_FACTORS = ("short_factor", "long_factor")


def check_architectures(raw: dict[str, Any], file: str = "config.json") -> list[str]:
    """``architectures`` must be a list of class names; returns it (empty when absent)."""
    f = Fields(raw, file)
    archs = f.raw("architectures", [])
    if not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise f.error("architectures", 'a list of model class names such as ["Phi3ForCausalLM"]', archs)
    return archs


def _check(f: Fields, fields: tuple[Field, ...], vocab: int | None) -> None:
    """Type and range of each field present (presence of the required ones is checked before)."""
    for field in fields:
        if field.kind == "int":
            f.int(field.name, None, min=field.min, max=field.max)
        elif field.kind == "float":
            f.float(field.name, None, min=field.min, max=field.max, min_open=field.min_open)
        elif field.kind == "bool":
            f.bool(field.name, None)
        elif field.kind == "str":
            f.str(field.name, None)
        elif field.kind == "object":
            f.object(field.name, None)
        elif field.kind in ("token", "tokens") and f.has(field.name):
            value = f.data[field.name]
            ids = value if field.kind == "tokens" and isinstance(value, list) else [value]
            if not all(type(i) is int and 0 <= i < (vocab or 0) for i in ids):
                what = "a token id" + (" (or a list of ids)" if field.kind == "tokens" else "")
                raise f.error(field.name, f"{what} below vocab_size {vocab}", value)


def check_config(raw: dict[str, Any], fields: tuple[Field, ...], file: str = "config.json") -> None:
    """Check every field of ``fields`` (and the rope objects) in ``raw``; raise on the first bad one.

    Missing required fields are :class:`UnsupportedModelError` (the file is not a config of this
    architecture); malformed values :class:`~phi_quant.errors.CheckpointError`.
    """
    f = Fields(raw, file, missing=UnsupportedModelError, hint="is this a Phi-3/Phi-4 checkpoint?")
    for field in fields:  # required fields first, so a wrong file says so before anything else
        if field.required and not f.has(field.name):
            f.int(field.name)  # raises the "has no" message
    vocab = f.data.get("vocab_size") if type(f.data.get("vocab_size")) is int else None
    _check(f, fields, vocab)
    rope_objects = [f.object(name, None) for name in ("rope_scaling", "rope_parameters")]
    for rope in rope_objects:
        if rope is not None:
            _check(rope, ROPE_FIELDS, vocab)
            for name in _FACTORS:
                rope.float_list(name, None, min=0.0, min_open=True)


def check_heads(raw: dict[str, Any], file: str = "config.json") -> None:
    """The attention fields (checked by :func:`check_config` before) must agree with each other:
    a defined head size, query heads a multiple of KV heads, an even number of rotary dimensions."""
    f = Fields(raw, file)
    rope_parameters = f.object("rope_parameters", None)
    heads, hidden = f.data["num_attention_heads"], f.data["hidden_size"]
    head_dim = f.data.get("head_dim")
    if head_dim is None and hidden % heads:
        raise UnsupportedModelError(
            f"{file}: hidden_size {hidden} is not a multiple of num_attention_heads {heads} and there is no head_dim; "
            "the head size is undefined"
        )
    kv = f.data.get("num_key_value_heads") or heads
    if kv > heads or heads % kv:
        raise UnsupportedModelError(
            f"{file}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"
        )
    params = rope_parameters.data if rope_parameters is not None else {}
    partial = params.get("partial_rotary_factor") or f.data.get("partial_rotary_factor") or 1.0
    head = head_dim or hidden // heads
    rotary = int(head * partial)
    if rotary < 2 or rotary % 2:
        raise UnsupportedModelError(
            f"{file}: head_dim {head} x partial_rotary_factor {partial:g} gives {rotary} rotary dimensions; "
            "rotary embeddings turn pairs of dimensions, so it must be an even number of at least 2"
        )
