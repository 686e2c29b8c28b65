"""One module per architecture: everything that differs between model layouts lives here.

``phi_quant.arch.phi3`` reads Phi3ForCausalLM (Phi-3/3.5-mini, Phi-3-medium, Phi-4,
Phi-4-mini), ``phi_quant.arch.phimoe`` Phi-3.5-MoE (``PhiMoEForCausalLM`` / transformers'
``PhimoeForCausalLM``: experts, a router, LayerNorm, biases). Each module defines an :class:`Architecture` object that owns the config parsing,
the tensor roles and their Hugging Face names, the stream order and expected shapes, the row
splits of fused tensors, the parameter count and memory estimate, and the numpy oracle. The
:mod:`registry <phi_quant.arch.registry>` picks the module from ``config.json`` and refuses
related models it cannot convert, with the reason. ``docs/architectures.md`` says what adding
the next architecture takes.
"""

from .base import Architecture, Split, TensorSpec
from .config import PhiConfig, RopeSpec
from .oracle import ReferenceModel, layer_norm, rope_tables, sparsemixer
from .registry import (
    REFUSED,
    architecture_for,
    architecture_names,
    architectures,
    get_architecture,
    normalize_config,
    supported_hf_architectures,
)
from .roles import TensorRole

__all__ = [
    "Architecture", "TensorSpec", "Split", "PhiConfig", "RopeSpec", "TensorRole", "ReferenceModel", "rope_tables",
    "layer_norm", "sparsemixer",
    "REFUSED", "architecture_for", "architecture_names", "architectures", "get_architecture", "normalize_config",
    "supported_hf_architectures",
]
