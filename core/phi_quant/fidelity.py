"""How far a candidate's next-token distributions are from the oracle's.

All statistics are computed in float64 from log-softmax, so a KL of 1e-7 between fp32 runs is
a real number and not rounding noise, and huge logits never overflow. KL is
KL(reference || candidate): the expected extra surprise of the candidate where the reference
puts its mass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Sequence

import numpy as np

__all__ = ["FidelityReport", "compare_logits", "log_softmax", "perplexity", "EVAL_TEXT", "eval_text"]


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


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> FidelityReport:
    """Compare ``[positions, vocab]`` logits (a 1-D array counts as one position).

    The vocabularies must match (backends pad or trim to ``config.vocab_size`` rows);
    non-finite candidate logits make every statistic infinite/NaN rather than hiding them.
    """
    ref = _as_2d(reference, "reference")
    cand = _as_2d(candidate, "candidate")
    if ref.shape != cand.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape}, candidate {cand.shape}")
    if ref.shape[0] == 0:
        raise ValueError("no positions to compare")
    lp, lq = log_softmax(ref), log_softmax(cand)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1)
    kl = np.maximum(kl, 0.0)  # tiny negative values are rounding
    r64, c64 = ref.astype(np.float64), cand.astype(np.float64)
    denom = np.linalg.norm(r64, axis=-1) * np.linalg.norm(c64, axis=-1)
    cos = np.sum(r64 * c64, axis=-1) / np.where(denom == 0, 1.0, denom)
    return FidelityReport(
        kl_mean=float(kl.mean()),
        kl_max=float(kl.max()),
        top1_agreement=float(np.mean(ref.argmax(-1) == cand.argmax(-1))),
        cosine_mean=float(cos.mean()),
        max_abs_diff=float(np.abs(r64 - c64).max()),
        positions=int(ref.shape[0]),
    )


def perplexity(logits: np.ndarray, ids: Sequence[int]) -> float:
    """exp(mean negative log-likelihood) of ``ids[1:]`` given ``logits[:-1]`` (logits of the full run of ``ids``)."""
    lg = _as_2d(logits, "")
    ids = np.asarray(list(ids), dtype=np.int64)
    if len(ids) < 2:
        raise ValueError("perplexity needs at least two tokens")
    if lg.shape[0] != len(ids):
        raise ValueError(f"{lg.shape[0]} logit rows for {len(ids)} ids; pass the logits of the full sequence")
    lp = log_softmax(lg[:-1])
    nll = -lp[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))
