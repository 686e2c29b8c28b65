"""The oracle's shared parts: float32 numpy building blocks and the :class:`ReferenceModel` base.

Each architecture module subclasses :class:`ReferenceModel` with its own ``hidden_states``
(the decoder stack up to the final norm) and ``lm_head``; what every oracle does the same way
(float32 weights, id checks, logits, greedy generation, loading from a source) lives here.
``ReferenceModel(config, weights)`` builds the oracle of ``config``'s architecture.

No KV cache: :meth:`ReferenceModel.logits` recomputes the whole sequence. That is the point:
simple enough to trust, fast enough for the tiny test models and a few hundred tokens.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .config import PhiConfig

__all__ = ["ReferenceModel", "rope_tables", "rms_norm", "layer_norm", "rotate", "softmax", "silu", "causal_attention",
           "sparsemixer"]


def rope_tables(config: PhiConfig, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, float32 ``[seq_len, rotary_dim]``, for positions ``0..seq_len-1``.

    LongRoPE: one set of factors for the whole sequence, long iff ``seq_len`` exceeds the original
    context (transformers' ``longrope_frequency_update`` uses ``max(position_ids) + 1``); cos/sin
    are scaled by the attention factor, or by the mscale of the chosen set where the config has
    one (:meth:`RopeSpec.mscale`).
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
        scale = np.float32(rope.mscale(use_long))
    else:
        inv_freq = (np.float32(1.0) / base_pow).astype(np.float32)
    pos = np.arange(seq_len, dtype=np.float32)
    freqs = pos[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return (np.cos(emb) * scale).astype(np.float32), (np.sin(emb) * scale).astype(np.float32)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return weight * (x / np.sqrt(var + np.float32(eps))).astype(np.float32)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis as torch computes it: biased variance, then scale and shift."""
    mean = np.mean(x, axis=-1, keepdims=True, dtype=np.float32)
    centred = (x - mean).astype(np.float32)
    var = np.mean(centred * centred, axis=-1, keepdims=True, dtype=np.float32)
    return (centred / np.sqrt(var + np.float32(eps))).astype(np.float32) * weight + bias


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """NEOX rotary on the leading ``cos.shape[-1]`` dims of ``x`` [heads, T, head_dim]."""
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = np.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return np.concatenate([rot * cos + rotated * sin, rest], axis=-1)


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, sliding_window: int | None = None) -> np.ndarray:
    """Softmax attention of ``q`` [heads, T, hd] over ``k``/``v`` [kv_heads, T, hd] (grouped KV
    heads repeated), causal and optionally limited to the last ``sliding_window`` positions.
    Returns ``[T, heads * hd]``."""
    heads, T, hd = q.shape
    group = heads // k.shape[0]
    k = np.repeat(k, group, axis=0)
    v = np.repeat(v, group, axis=0)
    scores = (q @ k.transpose(0, 2, 1)) * np.float32(hd**-0.5)
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    allowed = j <= i
    if sliding_window is not None:
        allowed &= j > i - int(sliding_window)
    scores = np.where(allowed[None], scores, np.float32(-np.inf))
    out = softmax(scores.astype(np.float32)) @ v  # [heads, T, hd]
    return out.transpose(1, 0, 2).reshape(T, heads * hd)


def sparsemixer(logits: np.ndarray, jitter_eps: float) -> tuple[np.ndarray, np.ndarray]:
    """PhiMoE's top-2 routing at inference time (transformers ``sparsemixer``, ``training=False``).

    ``logits`` [T, experts] from the router. The first expert is the argmax; its weight is its
    softmax probability among the experts whose logit lies within ``2 * jitter_eps`` (relative to
    ``max(|logit|, best)``) of the best, the others masked out. The second expert is the argmax
    of the rest, weighted the same way among the remaining experts close to it. Without near-ties
    both weights are exactly 1: the two experts' outputs are summed, not averaged, which is
    where this differs from a softmax-then-top-k router.

    :returns: (expert indices int64 [T, 2], weights float32 [T, 2]).
    """
    scores = np.asarray(logits, dtype=np.float32)
    rows = np.arange(scores.shape[0])
    picks, weights = [], []
    masked_scores = scores
    for _ in range(2):
        best = masked_scores.argmax(axis=-1)
        threshold = masked_scores[rows, best][:, None]
        factor = np.maximum(np.abs(scores), threshold)
        with np.errstate(divide="ignore", invalid="ignore"):  # all-zero logits: 0/0 is "not far", as in torch
            far = ((threshold - scores) / factor) > np.float32(2 * jitter_eps)
        gates = softmax(np.where(far, np.float32(-np.inf), masked_scores).astype(np.float32))
        picks.append(best)
        weights.append(gates[rows, best])
        masked_scores = masked_scores.copy()
        masked_scores[rows, best] = np.float32(-np.inf)
    return np.stack(picks, axis=-1).astype(np.int64), np.stack(weights, axis=-1).astype(np.float32)


class ReferenceModel:
    """The fp32 oracle. ``weights`` maps Hugging Face tensor names to arrays (cast to float32).

    ``ReferenceModel(config, weights)`` returns the oracle of ``config``'s architecture (an
    instance of that module's subclass); subclasses implement :meth:`hidden_states` and
    :meth:`lm_head`, and may rearrange ``self.w`` in :meth:`_prepare`.
    """

    def __new__(cls, config: PhiConfig, weights: Mapping[str, np.ndarray]) -> "ReferenceModel":
        if cls is ReferenceModel:
            cls = config.arch.reference_class
        return super().__new__(cls)

    def __init__(self, config: PhiConfig, weights: Mapping[str, np.ndarray]):
        self.config = config
        self.w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        self._prepare()

    def _prepare(self) -> None:
        """Bring ``self.w`` into the form the forward pass reads (fuse, tie, ...)."""

    @classmethod
    def from_source(cls, source: Any) -> "ReferenceModel":
        """Build from an open :class:`phi_quant.model.source.ModelSource` (loads every tensor as float32)."""
        weights = {t.name: t.to_float32() for t in source.tensors()}
        return cls(source.config, weights)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def _ids(self, ids: Sequence[int]) -> np.ndarray:
        out = np.asarray(list(ids), dtype=np.int64)
        if out.ndim != 1 or out.size == 0:
            raise ValueError("ids must be a non-empty 1-D sequence of token ids")
        if out.min() < 0 or out.max() >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")
        return out

    def hidden_states(self, ids: Sequence[int]) -> np.ndarray:
        """Final-norm hidden states ``[T, hidden]`` (before the lm_head)."""
        raise NotImplementedError

    def lm_head(self, hidden: np.ndarray) -> np.ndarray:
        """Logits ``[T, vocab]`` from final-norm hidden states."""
        raise NotImplementedError

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits at every position, float32 ``[len(ids), vocab_size]``."""
        return self.lm_head(self.hidden_states(ids)).astype(np.float32)

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
