"""Checkpoint reading: config normalisation and the one-tensor-at-a-time stream."""

from .checks import check_finite
from .config import PhiConfig, RopeSpec, normalize_config
from .source import ModelSource, open_model
from .tensors import SourceTensor, TensorInfo, TensorRole, hf_name

__all__ = [
    "PhiConfig", "RopeSpec", "normalize_config", "SourceTensor", "TensorInfo", "TensorRole", "hf_name",
    "ModelSource", "open_model", "check_finite",
]
