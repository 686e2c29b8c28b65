"""The normalised model description, read from ``config.json`` by the architecture modules.

Kept for the names plugins and tests import: :class:`PhiConfig` and :class:`RopeSpec` live in
:mod:`phi_quant.arch.config`, each architecture's parsing in its module
(:func:`phi_quant.arch.phi3.parse_config`), and :func:`normalize_config` (which picks the
module, or refuses the checkpoint with the reason) in :mod:`phi_quant.arch.registry`.
"""

from __future__ import annotations

from ..arch.config import PhiConfig, RopeSpec
from ..arch.registry import normalize_config, supported_hf_architectures

__all__ = ["RopeSpec", "PhiConfig", "normalize_config", "SUPPORTED_ARCHITECTURES"]

#: Hugging Face class names some architecture module reads.
SUPPORTED_ARCHITECTURES = supported_hf_architectures()
