"""What a tensor is, in words every architecture and every backend share.

One vocabulary for all architectures (like llama.cpp's ``LLM_TENSOR_*``): an architecture
module says which roles its checkpoints hold, under which Hugging Face names and in which order;
a backend maps roles to its own names. A tensor of a mixture-of-experts layer carries the expert
index next to its layer index (:attr:`phi_quant.model.tensors.TensorInfo.expert`), not in its role.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["TensorRole"]


class TensorRole(str, Enum):
    """What a tensor is in the decoder. Fused roles come from the checkpoint; split ones are row slices."""

    EMBED = "embed"  # token embedding [vocab, hidden]
    ATTN_NORM = "attn_norm"  # norm before attention [hidden]
    QKV = "qkv"  # fused attention input projection [q+2kv, hidden], rows [Q | K | V]
    Q = "q"  # query projection, or rows [0, q) of QKV
    K = "k"  # key projection, or rows [q, q+kv) of QKV
    V = "v"  # value projection, or rows [q+kv, q+2kv) of QKV
    O = "o"  # attention output projection [hidden, q]
    FFN_NORM = "ffn_norm"  # norm before the MLP [hidden]
    GATE_UP = "gate_up"  # fused MLP input projection [2*inter, hidden], rows [gate | up]
    GATE = "gate"  # MLP gate projection, or rows [0, inter) of GATE_UP
    UP = "up"  # MLP up projection, or rows [inter, 2*inter) of GATE_UP
    DOWN = "down"  # MLP output projection [hidden, inter]
    FINAL_NORM = "final_norm"  # norm after the last layer [hidden]
    LM_HEAD = "lm_head"  # output projection [vocab, hidden]; absent when embeddings are tied

    @property
    def is_matmul(self) -> bool:
        """True for 2-D weights that multiply activations (the ones worth quantizing)."""
        return self not in _VECTORS

    @property
    def is_norm(self) -> bool:
        return self in _NORMS


_NORMS = frozenset({TensorRole.ATTN_NORM, TensorRole.FFN_NORM, TensorRole.FINAL_NORM})
#: Roles of 1-D tensors, kept in float by every backend.
_VECTORS = _NORMS
