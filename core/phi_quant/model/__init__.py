"""Checkpoint reading: config normalisation and the one-tensor-at-a-time stream."""

from .config import PhiConfig, RopeSpec, normalize_config
from .tensors import SourceTensor, TensorInfo, TensorRole, hf_name

__all__ = ["PhiConfig", "RopeSpec", "normalize_config", "SourceTensor", "TensorInfo", "TensorRole", "hf_name"]
