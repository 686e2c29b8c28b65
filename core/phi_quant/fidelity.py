"""How far a candidate's next-token distributions are from the oracle's.

All statistics are computed in float64 from log-softmax, so a KL of 1e-7 between fp32 runs is
a real number and not rounding noise, and huge logits never overflow. KL is
KL(reference || candidate): the expected extra surprise of the candidate where the reference
puts its mass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["FidelityReport", "FidelityAccumulator", "compare_logits", "log_softmax", "perplexity", "token_nll", "text_windows",
           "windowed_nll", "EVAL_TEXT", "eval_text"]


def eval_text() -> str:
    """The bundled English passage (public domain, written for phi-quant) used for perplexity."""
    return resources.files("phi_quant").joinpath("data/eval_text.txt").read_text(encoding="utf-8")


EVAL_TEXT = eval_text()


@dataclass(frozen=True)
class FidelityReport:
    """Agreement of candidate logits with reference logits over ``positions`` positions."""

    kl_mean: float  # mean KL(reference || candidate) in nats
    kl_max: float
    top1_agreement: float  # fraction of positions whose argmax agrees
    cosine_mean: float  # mean cosine similarity of the raw logit vectors
    max_abs_diff: float  # largest |reference - candidate| logit
    positions: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _as_2d(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{what} logits must be [positions, vocab], got shape {a.shape}")
    return a


#: Rows compared at once: float64 copies of a few rows, not of a whole window (512 × 49k × 8 B = 200 MB each).
_ROWS_PER_BLOCK = 64


class FidelityAccumulator:
    """Per-position statistics gathered a block of rows at a time, for texts longer than memory likes.

    ``add`` any number of ``[positions, vocab]`` pairs, then ``report()`` is exactly what
    :func:`compare_logits` gives on all of them concatenated.
    """

    def __init__(self) -> None:
        self._kl: list[np.ndarray] = []
        self._cos: list[np.ndarray] = []
        self._top1: list[np.ndarray] = []
        self._maxabs: list[float] = []

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        ref = _as_2d(reference, "reference")
        cand = _as_2d(candidate, "candidate")
        if ref.shape != cand.shape:
            raise ValueError(f"logit shapes differ: reference {ref.shape}, candidate {cand.shape}")
        for k in range(0, ref.shape[0], _ROWS_PER_BLOCK):
            r, c = ref[k : k + _ROWS_PER_BLOCK], cand[k : k + _ROWS_PER_BLOCK]
            lp, lq = log_softmax(r), log_softmax(c)
            kl = np.sum(np.exp(lp) * (lp - lq), axis=-1)
            self._kl.append(np.maximum(kl, 0.0))  # tiny negative values are rounding
            r64, c64 = r.astype(np.float64), c.astype(np.float64)
            denom = np.linalg.norm(r64, axis=-1) * np.linalg.norm(c64, axis=-1)
            self._cos.append(np.sum(r64 * c64, axis=-1) / np.where(denom == 0, 1.0, denom))
            self._top1.append(r.argmax(-1) == c.argmax(-1))
            self._maxabs.append(float(np.abs(r64 - c64).max()))

    @property
    def positions(self) -> int:
        return int(sum(len(k) for k in self._kl))

    def report(self) -> FidelityReport:
        if not self.positions:
            raise ValueError("no positions to compare")
        kl, cos, top1 = np.concatenate(self._kl), np.concatenate(self._cos), np.concatenate(self._top1)
        return FidelityReport(
            kl_mean=float(kl.mean()),
            kl_max=float(kl.max()),
            top1_agreement=float(np.mean(top1)),
            cosine_mean=float(cos.mean()),
            max_abs_diff=float(np.max(self._maxabs)),
            positions=int(kl.size),
        )


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> FidelityReport:
    """Compare ``[positions, vocab]`` logits (a 1-D array counts as one position).

    The vocabularies must match (backends pad or trim to ``config.vocab_size`` rows);
    non-finite candidate logits make every statistic infinite/NaN rather than hiding them.
    """
    acc = FidelityAccumulator()
    acc.add(reference, candidate)
    return acc.report()


def token_nll(logits: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """float64 negative log-likelihood of ``ids[1:]`` given ``logits[:-1]`` (logits of the full run of ``ids``)."""
    lg = _as_2d(logits, "")
    ids = np.asarray(list(ids), dtype=np.int64)
    if len(ids) < 2:
        raise ValueError("perplexity needs at least two tokens")
    if lg.shape[0] != len(ids):
        raise ValueError(f"{lg.shape[0]} logit rows for {len(ids)} ids; pass the logits of the full sequence")
    lp = log_softmax(lg[:-1])
    return -lp[np.arange(len(ids) - 1), ids[1:]]


def perplexity(logits: np.ndarray, ids: Sequence[int]) -> float:
    """exp(mean negative log-likelihood) of ``ids[1:]`` given ``logits[:-1]`` (logits of the full run of ``ids``)."""
    return float(np.exp(token_nll(logits, ids).mean()))


def text_windows(ids: Sequence[int], window: int) -> list[list[int]]:
    """``ids`` cut into consecutive, non-overlapping windows of ``window`` tokens (a last piece under 2 is dropped).

    Each window is run on its own from position 0, so every backend sees exactly the same
    sequences whatever its context or cache, and the first token of each window is context only.
    """
    if window < 2:
        raise ValueError(f"a perplexity window needs at least 2 tokens, got {window}")
    ids = list(ids)
    return [ids[k : k + window] for k in range(0, len(ids), window) if len(ids) - k >= 2]


def windowed_nll(logits_of: Callable[[list[int]], np.ndarray], windows: Sequence[list[int]]) -> np.ndarray:
    """Negative log-likelihoods of every predicted token of every window, ``logits_of`` run once per window.

    ``exp(mean)`` of the result is the windowed perplexity; only one window's logits live at a time.
    """
    parts = [token_nll(np.asarray(logits_of(list(w)), dtype=np.float32), w) for w in windows]
    return np.concatenate(parts) if parts else np.zeros(0)
