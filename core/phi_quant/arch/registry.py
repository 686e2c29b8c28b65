"""Which architecture module reads a checkpoint: ``config.json`` ``architectures`` / ``model_type``
to module, and the related models refused with the reason.

Adding an architecture is one module in this package plus its name in :data:`_MODULES`.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import UnsupportedModelError
from .base import Architecture
from .config import PhiConfig
from .config_fields import check_architectures

__all__ = ["REFUSED", "architecture_names", "architectures", "get_architecture", "architecture_for",
           "normalize_config", "supported_hf_architectures"]

#: Architecture modules of this package, in the order messages list them.
_MODULES = ("phi3", "phimoe")

#: Architectures that look related but compute something else: refused with a reason.
REFUSED = {
    "Phi3SmallForCausalLM": "Phi-3-small uses block-sparse attention, GeGELU and muP scaling",
    "PhiForCausalLM": "Phi-1/Phi-2 use LayerNorm, biases and a parallel attention/MLP block",
    "Phi3VForCausalLM": "Phi-3-vision carries an image encoder",
    "Phi4MMForCausalLM": "Phi-4-multimodal carries vision/speech encoders and LoRA adapters",
}

_LOADED: dict[str, Architecture] = {}


def architectures() -> list[Architecture]:
    """Every architecture phi-quant reads, in :data:`_MODULES` order."""
    for name in _MODULES:
        if name not in _LOADED:
            _LOADED[name] = importlib.import_module(f"{__package__}.{name}").ARCHITECTURE
    return [_LOADED[n] for n in _MODULES]


def architecture_names() -> tuple[str, ...]:
    """Short names of the architectures phi-quant reads (``("phi3",)``)."""
    return tuple(a.name for a in architectures())


def supported_hf_architectures() -> tuple[str, ...]:
    """Every Hugging Face class name some module reads."""
    return tuple(h for a in architectures() for h in a.hf_architectures)


def get_architecture(name: str) -> Architecture:
    """The architecture called ``name`` (``"phi3"``); ``KeyError`` listing the known ones."""
    for a in architectures():
        if a.name == name:
            return a
    raise KeyError(f"unknown architecture {name!r}; phi-quant knows: {', '.join(architecture_names())}")


def _supported() -> str:
    return ", ".join(f"{'/'.join(a.hf_architectures)} ({a.models})" for a in architectures())


def architecture_for(raw: dict[str, Any], file: str = "config.json") -> Architecture:
    """The module that reads this ``config.json``, or :class:`UnsupportedModelError` saying why not.

    ``architectures[0]`` decides; a config without it is matched by ``model_type``.
    """
    archs = check_architectures(raw, file)
    model_type = raw.get("model_type") if isinstance(raw.get("model_type"), str) else None
    arch = archs[0] if archs else None
    if arch in REFUSED:
        raise UnsupportedModelError(f"architecture {arch} is not supported: {REFUSED[arch]}. Supported: {_supported()}.")
    for a in architectures():
        if arch in a.hf_architectures or (arch is None and model_type in a.model_types):
            return a
    raise UnsupportedModelError(
        f"architecture {arch or model_type or 'unknown'} is not supported. Supported: {_supported()}."
    )


def normalize_config(raw: dict[str, Any], *, tokenizer_size: int | None = None, file: str = "config.json") -> PhiConfig:
    """Turn a raw ``config.json`` dict into a :class:`PhiConfig`, refusing what we cannot convert
    (every field checked by type and range first); ``file`` is how refusals name the config."""
    return architecture_for(raw, file).parse_config(raw, tokenizer_size=tokenizer_size, file=file)
