"""Calibration without data: token sequences drawn from the model's own vocabulary.

``--calibration synthetic`` gives the calibrated recipes (``gptq``, ``awq`` ...) inputs that no
text supplied: seeded token ids drawn with probability proportional to ``1 / (rank + 10)``,
where ``rank`` is a token's position among the vocabulary's ordinary tokens. BPE vocabularies
(Phi-3's SentencePiece BPE, Phi-4's and SmolLM2's byte-level BPE) store their tokens in merge
order, which is close to frequency order, so this Zipf-like law makes common tokens common,
as in text; uniform ids would make rare sub-words as frequent as ``the``. Added tokens (special
and chat tokens) and SentencePiece's byte-fallback tokens (``<0x00>`` ...) are never drawn.

Why it helps although the sequences are not language: GPTQ needs the *second moments* of each
matmul's inputs (XᵀX), and the residual stream's dominant directions (its outlier channels, the
norms' gains) are properties of the weights that any plausible token mix excites. Measured on
``real:smollm2`` (docs/fidelity.md): at the default int4 scheme of every backend this keeps
most of the gain of calibrating on real text. The draw depends only on the vocabulary, the
seed and :data:`VERSION`, so its statistics are cached under a stable key like a text's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..texts import SourceText

__all__ = ["SYNTHETIC", "SyntheticText", "synthetic_text", "is_synthetic"]

#: The word ``--calibration`` takes for this source (a file of that name: pass ``./synthetic``).
SYNTHETIC = "synthetic"
#: Bumped whenever the draw changes, so cached statistics of an older draw are not reused.
VERSION = 1
#: The law's offset: p(rank) ∝ 1 / (rank + OFFSET); 10 keeps the first tokens from dominating.
OFFSET = 10.0
SEED = 0
_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass(frozen=True)
class SyntheticText(SourceText):
    """A calibration "text" that is a rule for drawing ids; ``text`` is the rule, so its sha256 keys the cache."""

    seed: int = SEED

    def token_ids(self, tokenizer: Any, count: int) -> list[int]:
        """``count`` ids drawn from ``tokenizer``'s ordinary tokens (a ``tokenizers.Tokenizer``)."""
        added = set(tokenizer.get_added_tokens_decoder())
        vocab = tokenizer.get_vocab(with_added_tokens=False)
        ids = np.array(sorted(i for t, i in vocab.items() if i not in added and not _BYTE_FALLBACK.match(t)),
                       dtype=np.int64)
        if ids.size == 0:
            return []
        weights = 1.0 / (np.arange(ids.size, dtype=np.float64) + OFFSET)
        rng = np.random.default_rng(self.seed)
        return ids[rng.choice(ids.size, size=count, p=weights / weights.sum())].tolist()


def synthetic_text(seed: int = SEED) -> SyntheticText:
    rule = f"phi-quant synthetic calibration v{VERSION}: ordinary vocabulary ids, p(rank) ~ 1/(rank+{OFFSET:g}), seed {seed}"
    return SyntheticText(name=SYNTHETIC, text=rule, files=(), seed=seed)


def is_synthetic(value: Any) -> bool:
    """True for the ``--calibration`` value that asks for this source (the word, not a path to a file)."""
    return isinstance(value, str) and value.strip().lower() == SYNTHETIC
