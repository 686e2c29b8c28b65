"""The oracle: a float32 numpy forward pass of Phi3ForCausalLM.

Every backend's output is judged against these logits, and tests/test_oracle.py holds this
module to transformers' ``Phi3ForCausalLM`` (float32, eager attention) within 1e-4 on every tiny
variant. It follows transformers step by step: RMSNorm in float32, fused qkv split
[Q | K | V], NEOX rotary on the first ``rotary_dim`` dims, LongRoPE factors chosen once per
sequence (long when the sequence is longer than the original context) with cos/sin scaled by
the attention factor, causal (and sliding-window) softmax attention with grouped KV heads,
``down(up * silu(gate))``, and the lm_head (the embedding when tied).

No KV cache: :meth:`ReferenceModel.logits` recomputes the whole sequence. That is the point:
simple enough to trust, fast enough for the tiny test models and a few hundred tokens.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from .model.config import PhiConfig
from .model.tensors import TensorRole, hf_name

__all__ = ["ReferenceModel", "rope_tables"]


def rope_tables(config: PhiConfig, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, float32 ``[seq_len, rotary_dim]``, for positions ``0..seq_len-1``.

    LongRoPE: one set of factors for the whole sequence, long iff ``seq_len`` exceeds the original
    context (transformers' ``longrope_frequency_update`` uses ``max(position_ids) + 1``).
    """
    rope = config.rope
    dim = rope.rotary_dim
    exponent = (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)).astype(np.float32)
    base_pow = np.power(np.float32(rope.theta), exponent, dtype=np.float32)
    scale = np.float32(1.0)
    if rope.is_longrope:
        use_long = seq_len > (rope.original_max_position or config.max_position_embeddings)
        ext = np.asarray(rope.long_factor if use_long else rope.short_factor, dtype=np.float32)
        inv_freq = (np.float32(1.0) / (ext * base_pow)).astype(np.float32)
        scale = np.float32(rope.attention_factor)
    else:
        inv_freq = (np.float32(1.0) / base_pow).astype(np.float32)
    pos = np.arange(seq_len, dtype=np.float32)
    freqs = pos[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return (np.cos(emb) * scale).astype(np.float32), (np.sin(emb) * scale).astype(np.float32)


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return weight * (x / np.sqrt(var + np.float32(eps))).astype(np.float32)


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """NEOX rotary on the leading ``cos.shape[-1]`` dims of ``x`` [heads, T, head_dim]."""
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = np.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return np.concatenate([rot * cos + rotated * sin, rest], axis=-1)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


class ReferenceModel:
    """fp32 Phi3ForCausalLM. ``weights`` maps Hugging Face tensor names to float32 arrays.

    Split checkpoints (``q_proj``/``k_proj``/``v_proj``, ``gate_proj``/``up_proj``) are fused on
    load; a missing ``lm_head.weight`` falls back to the embedding when embeddings are tied.
    """

    def __init__(self, config: PhiConfig, weights: Mapping[str, np.ndarray]):
        self.config = config
        self.w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        for n in range(config.num_layers):
            self._fuse(n, TensorRole.QKV, (TensorRole.Q, TensorRole.K, TensorRole.V))
            self._fuse(n, TensorRole.GATE_UP, (TensorRole.GATE, TensorRole.UP))
        head = hf_name(TensorRole.LM_HEAD)
        if head not in self.w:
            if not config.tie_word_embeddings:
                raise KeyError(f"{head} is missing and tie_word_embeddings is false")
            self.w[head] = self.w[hf_name(TensorRole.EMBED)]

    def _fuse(self, layer: int, fused: TensorRole, parts: Iterable[TensorRole]) -> None:
        name = hf_name(fused, layer)
        if name not in self.w:
            self.w[name] = np.concatenate([self.w.pop(hf_name(p, layer)) for p in parts], axis=0)

    @classmethod
    def from_source(cls, source: object) -> "ReferenceModel":
        """Build from an open :class:`phi_quant.model.source.ModelSource` (loads every tensor as float32)."""
        weights = {t.name: t.to_float32() for t in source.tensors()}  # type: ignore[attr-defined]
        return cls(source.config, weights)  # type: ignore[attr-defined]

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def _attention(self, layer: int, h: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        c = self.config
        T, hd = h.shape[0], c.head_dim
        qkv = h @ self.w[hf_name(TensorRole.QKV, layer)].T
        q = qkv[:, : c.q_size].reshape(T, c.num_heads, hd).transpose(1, 0, 2)
        k = qkv[:, c.q_size : c.q_size + c.kv_size].reshape(T, c.num_kv_heads, hd).transpose(1, 0, 2)
        v = qkv[:, c.q_size + c.kv_size :].reshape(T, c.num_kv_heads, hd).transpose(1, 0, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        group = c.num_heads // c.num_kv_heads
        k = np.repeat(k, group, axis=0)
        v = np.repeat(v, group, axis=0)
        scores = (q @ k.transpose(0, 2, 1)) * np.float32(hd**-0.5)
        i = np.arange(T)[:, None]
        j = np.arange(T)[None, :]
        allowed = j <= i
        if c.sliding_window is not None:
            allowed &= j > i - int(c.sliding_window)
        scores = np.where(allowed[None], scores, np.float32(-np.inf))
        out = _softmax(scores.astype(np.float32)) @ v  # [heads, T, hd]
        out = out.transpose(1, 0, 2).reshape(T, c.q_size)
        return out @ self.w[hf_name(TensorRole.O, layer)].T

    def _mlp(self, layer: int, h: np.ndarray) -> np.ndarray:
        gu = h @ self.w[hf_name(TensorRole.GATE_UP, layer)].T
        gate, up = gu[:, : self.config.intermediate_size], gu[:, self.config.intermediate_size :]
        act = up * (gate / (np.float32(1.0) + np.exp(-gate)))
        return act.astype(np.float32) @ self.w[hf_name(TensorRole.DOWN, layer)].T

    def hidden_states(self, ids: Sequence[int]) -> np.ndarray:
        """Final-norm hidden states ``[T, hidden]`` (before the lm_head)."""
        c = self.config
        ids = np.asarray(list(ids), dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("ids must be a non-empty 1-D sequence of token ids")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ValueError(f"token ids must lie in [0, {c.vocab_size})")
        x = self.w[hf_name(TensorRole.EMBED)][ids]
        cos, sin = rope_tables(c, len(ids))
        for n in range(c.num_layers):
            h = _rms_norm(x, self.w[hf_name(TensorRole.ATTN_NORM, n)], c.rms_norm_eps)
            x = x + self._attention(n, h, cos, sin)
            h = _rms_norm(x, self.w[hf_name(TensorRole.FFN_NORM, n)], c.rms_norm_eps)
            x = x + self._mlp(n, h)
        return _rms_norm(x, self.w[hf_name(TensorRole.FINAL_NORM)], c.rms_norm_eps)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits at every position, float32 ``[len(ids), vocab_size]``."""
        return (self.hidden_states(ids) @ self.w[hf_name(TensorRole.LM_HEAD)].T).astype(np.float32)

    def generate(self, ids: Sequence[int], max_new_tokens: int, eos_ids: Iterable[int] | None = None) -> list[int]:
        """Greedy continuation: the NEW token ids only (an end token, if produced, is included last).

        Each step reruns the full sequence, so LongRoPE switches to the long factors once the
        sequence grows past the original context, exactly as transformers does per forward pass.
        """
        seq = list(ids)
        stop = set(eos_ids or ())
        new: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(np.argmax(self.logits(seq)[-1]))
            new.append(nxt)
            seq.append(nxt)
            if nxt in stop:
                break
        return new
