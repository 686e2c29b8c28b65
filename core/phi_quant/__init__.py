"""phi-quant: quantize Microsoft Phi models and export them for llama.cpp, ONNX Runtime GenAI,
OpenVINO and MLX through installable backend plugins."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
