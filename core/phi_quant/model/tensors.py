"""What one tensor of the checkpoint stream looks like to backends.

A :class:`SourceTensor` is a handle, not data: ``raw()`` returns a zero-copy view into the
memory-mapped safetensors file in the stored dtype, so streaming a model costs about one tensor
of memory at a time. ``role`` and ``layer`` say what the tensor is, so writers never parse HF names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import numpy as np

__all__ = ["TensorRole", "SourceTensor", "TensorInfo", "hf_name", "DTYPE_ITEMSIZE"]

DTYPE_ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2}


class TensorRole(str, Enum):
    """What a tensor is in the Phi3 decoder. Fused roles come from the checkpoint; split ones are row slices."""

    EMBED = "embed"  # model.embed_tokens.weight [vocab, hidden]
    ATTN_NORM = "attn_norm"  # model.layers.N.input_layernorm.weight [hidden]
    QKV = "qkv"  # model.layers.N.self_attn.qkv_proj.weight [q+2kv, hidden]
    Q = "q"  # split view of QKV rows [0, q)
    K = "k"  # split view of QKV rows [q, q+kv)
    V = "v"  # split view of QKV rows [q+kv, q+2kv)
    O = "o"  # model.layers.N.self_attn.o_proj.weight [hidden, q]
    FFN_NORM = "ffn_norm"  # model.layers.N.post_attention_layernorm.weight [hidden]
    GATE_UP = "gate_up"  # model.layers.N.mlp.gate_up_proj.weight [2*inter, hidden], rows [gate | up]
    GATE = "gate"  # split view of GATE_UP rows [0, inter)
    UP = "up"  # split view of GATE_UP rows [inter, 2*inter)
    DOWN = "down"  # model.layers.N.mlp.down_proj.weight [hidden, inter]
    FINAL_NORM = "final_norm"  # model.norm.weight [hidden]
    LM_HEAD = "lm_head"  # lm_head.weight [vocab, hidden]; absent when embeddings are tied

    @property
    def is_matmul(self) -> bool:
        """True for 2-D weights that multiply activations (the ones worth quantizing)."""
        return self not in (TensorRole.ATTN_NORM, TensorRole.FFN_NORM, TensorRole.FINAL_NORM)

    @property
    def is_norm(self) -> bool:
        return not self.is_matmul


_LAYER_NAMES = {
    TensorRole.ATTN_NORM: "input_layernorm.weight",
    TensorRole.QKV: "self_attn.qkv_proj.weight",
    TensorRole.Q: "self_attn.q_proj.weight",
    TensorRole.K: "self_attn.k_proj.weight",
    TensorRole.V: "self_attn.v_proj.weight",
    TensorRole.O: "self_attn.o_proj.weight",
    TensorRole.FFN_NORM: "post_attention_layernorm.weight",
    TensorRole.GATE_UP: "mlp.gate_up_proj.weight",
    TensorRole.GATE: "mlp.gate_proj.weight",
    TensorRole.UP: "mlp.up_proj.weight",
    TensorRole.DOWN: "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    TensorRole.EMBED: "model.embed_tokens.weight",
    TensorRole.FINAL_NORM: "model.norm.weight",
    TensorRole.LM_HEAD: "lm_head.weight",
}


def hf_name(role: TensorRole, layer: int | None = None) -> str:
    """The Hugging Face tensor name for a role (split roles get the unfused HF-style names)."""
    if role in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[role]
    if layer is None:
        raise ValueError(f"role {role.value} needs a layer index")
    return f"model.layers.{layer}.{_LAYER_NAMES[role]}"


@dataclass(frozen=True)
class TensorInfo:
    """Name, role, dtype and shape of a tensor, known without reading its data (for headers)."""

    name: str
    role: TensorRole
    layer: int | None
    dtype: str  # stored dtype: "f32" | "f16" | "bf16"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = DTYPE_ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class SourceTensor(TensorInfo):
    """A tensor of the stream: metadata plus a lazy, zero-copy view of its bytes."""

    _loader: Callable[[], np.ndarray] = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def raw(self) -> np.ndarray:
        """Memory-mapped view in the stored dtype (bf16 is returned as ``uint16``), C-contiguous."""
        return self._loader()

    def to_float32(self) -> np.ndarray:
        """A float32 copy of this one tensor (allocates ``numel * 4`` bytes)."""
        a = self.raw()
        if self.dtype == "bf16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float32)

    def info(self) -> TensorInfo:
        return TensorInfo(self.name, self.role, self.layer, self.dtype, self.shape)
