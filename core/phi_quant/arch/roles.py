"""What a tensor is, in words every architecture and every backend share.

One vocabulary for all architectures (like llama.cpp's ``LLM_TENSOR_*``): an architecture
module says which roles its checkpoints hold, under which Hugging Face names and in which order;
a backend maps roles to its own names. A tensor of a mixture-of-experts layer carries the expert
index next to its layer index (:attr:`phi_quant.model.tensors.TensorInfo.expert`), not in its
role: expert 3's ``w1`` is ``GATE`` with ``expert=3``, its ``w2`` ``DOWN``, its ``w3`` ``UP``.

Biases are roles of their own (``Q_BIAS`` is the bias of ``Q``, ``ATTN_NORM_BIAS`` the shift
of a LayerNorm), so a backend that maps ``Q`` to a name maps ``Q_BIAS`` through
:attr:`TensorRole.weight_role` to the same name with a bias suffix.
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
    GATE = "gate"  # MLP gate projection, or rows [0, inter) of GATE_UP; an expert's w1
    UP = "up"  # MLP up projection, or rows [inter, 2*inter) of GATE_UP; an expert's w3
    DOWN = "down"  # MLP output projection [hidden, inter]; an expert's w2
    FINAL_NORM = "final_norm"  # norm after the last layer [hidden]
    LM_HEAD = "lm_head"  # output projection [vocab, hidden]; absent when embeddings are tied
    ROUTER = "router"  # mixture-of-experts router [experts, hidden]: one logit per expert
    # biases (1-D), each belonging to the weight role named in _BIAS_OF
    ATTN_NORM_BIAS = "attn_norm_bias"  # LayerNorm shift [hidden]
    Q_BIAS = "q_bias"  # [q]
    K_BIAS = "k_bias"  # [kv]
    V_BIAS = "v_bias"  # [kv]
    O_BIAS = "o_bias"  # [hidden]
    FFN_NORM_BIAS = "ffn_norm_bias"  # LayerNorm shift [hidden]
    FINAL_NORM_BIAS = "final_norm_bias"  # LayerNorm shift [hidden]
    LM_HEAD_BIAS = "lm_head_bias"  # [vocab]

    @property
    def is_matmul(self) -> bool:
        """True for 2-D weights that multiply activations (the ones worth quantizing)."""
        return self not in _VECTORS

    @property
    def is_norm(self) -> bool:
        """The scale of a norm (RMSNorm or LayerNorm); a LayerNorm's shift is :attr:`is_bias`."""
        return self in _NORMS

    @property
    def is_bias(self) -> bool:
        return self in _BIAS_OF

    @property
    def weight_role(self) -> "TensorRole":
        """The role whose bias this is (``Q_BIAS`` -> ``Q``); a weight role is its own."""
        return _BIAS_OF.get(self, self)

    @property
    def bias_role(self) -> "TensorRole | None":
        """The bias role of this weight role (``Q`` -> ``Q_BIAS``), ``None`` if none exists."""
        return _BIAS_FOR.get(self)


_NORMS = frozenset({TensorRole.ATTN_NORM, TensorRole.FFN_NORM, TensorRole.FINAL_NORM})
_BIAS_OF = {
    TensorRole.ATTN_NORM_BIAS: TensorRole.ATTN_NORM,
    TensorRole.Q_BIAS: TensorRole.Q,
    TensorRole.K_BIAS: TensorRole.K,
    TensorRole.V_BIAS: TensorRole.V,
    TensorRole.O_BIAS: TensorRole.O,
    TensorRole.FFN_NORM_BIAS: TensorRole.FFN_NORM,
    TensorRole.FINAL_NORM_BIAS: TensorRole.FINAL_NORM,
    TensorRole.LM_HEAD_BIAS: TensorRole.LM_HEAD,
}
_BIAS_FOR = {w: b for b, w in _BIAS_OF.items()}
#: Roles of 1-D tensors, kept in float by every backend.
_VECTORS = _NORMS | frozenset(_BIAS_OF)
