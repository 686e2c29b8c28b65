"""Checks on the tokenizer files before any backend reads them.

Backends turn ``tokenizer.json`` into their runtime's vocabulary (a GGUF token table, a copy that
onnxruntime-extensions or mlx-lm parses): a vocabulary that is a string, a merge that is a
number, or an added token whose id is 10^9 would make a backend allocate gigabytes or write an
output its runtime cannot load. So the structure every backend relies on is checked here, and
every token id must address a row of the embedding (``vocab_size``).
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from ..fields import Fields

__all__ = ["check_tokenizer_json", "check_tokenizer_config", "check_generation_config", "check_ids_fit",
           "check_template_file", "TokenizerIds", "MODEL_TYPES"]

#: ``model.type`` values of the Hugging Face tokenizers library.
MODEL_TYPES = ("BPE", "Unigram", "WordPiece", "WordLevel")
_ID_MAX = 2**31 - 1


class TokenizerIds:
    """The largest token id of ``tokenizer.json`` and where it comes from (for messages)."""

    def __init__(self, size: int, largest: int | None, where: str):
        self.size = size  # max id + 1 (0 when empty)
        self.largest = largest
        self.where = where


def _is_id(v: Any) -> bool:
    return type(v) is int and 0 <= v <= _ID_MAX


def check_tokenizer_json(data: Any, file: str) -> TokenizerIds:
    """Validate the parts of ``tokenizer.json`` backends read; returns its id range."""
    tj = Fields(data, file)
    model = tj.object("model")
    kind = model.str("type", "BPE", choices=MODEL_TYPES)
    largest, where = None, ""
    if kind == "Unigram":
        pieces = model.list("vocab", item="of [piece, score] pairs", check=lambda p: (
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
            and isinstance(p[1], (int, float)) and not isinstance(p[1], bool)))
        if pieces:
            largest, where = len(pieces) - 1, f"model.vocab entry {pieces[-1][0]!r}"
    else:
        vocab = model.mapping("vocab", value="token strings to ids (non-negative integers)", check=_is_id)
        if vocab:
            token, largest = max(vocab.items(), key=lambda kv: kv[1])
            where = f"model.vocab token {token!r}"
    if kind == "BPE":
        model.list("merges", [], item="of 'a b' strings or [a, b] pairs", check=lambda m: (
            (isinstance(m, str) and " " in m) or (isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m))))
    added = tj.list("added_tokens", [], item="of objects with an integer id and a string content", check=lambda a: (
        isinstance(a, dict) and _is_id(a.get("id")) and isinstance(a.get("content"), str)))
    for a in added:
        if largest is None or a["id"] > largest:
            largest, where = a["id"], f"added token {a['content']!r}"
    return TokenizerIds(0 if largest is None else largest + 1, largest, where)


def _token_ok(v: Any) -> bool:
    return v is None or isinstance(v, str) or (isinstance(v, dict) and isinstance(v.get("content"), str))


def check_tokenizer_config(data: Any, file: str) -> dict[str, Any]:
    """Validate the fields of ``tokenizer_config.json`` backends read; returns the dict."""
    tc = Fields(data, file)
    template = tc.raw("chat_template")
    if template is not None and not isinstance(template, str):
        tc.list("chat_template", item="of {name, template} objects (or one template string)", check=lambda t: (
            isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)))
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if not _token_ok(tc.data.get(key)):
            raise tc.error(key, "a token string or an object with a string content", tc.data[key])
    for key in ("add_bos_token", "add_eos_token"):
        tc.bool(key, None)
    decoder = tc.mapping("added_tokens_decoder", None, value="token ids to {content: ...} objects",
                         check=lambda a: isinstance(a, dict) and isinstance(a.get("content"), str))
    for key in decoder or {}:
        if not key.isdigit():
            raise tc.error(f"added_tokens_decoder key {key!r}", "a token id", key)
    return tc.data


def check_generation_config(data: Any, file: str, vocab_size: int) -> dict[str, Any]:
    """Validate the token ids of ``generation_config.json`` against the embedding size."""
    gc = Fields(data, file)
    for key in ("bos_token_id", "pad_token_id", "eos_token_id"):
        value = gc.data.get(key)
        if value is None:
            continue
        ids = value if isinstance(value, list) else [value]
        if not all(type(i) is int and 0 <= i < vocab_size for i in ids):
            raise gc.error(key, f"a token id (or list of ids) below vocab_size {vocab_size}", value)
    return gc.data


def check_ids_fit(ids: TokenizerIds, file: str, vocab_size: int) -> None:
    """Every token id must address an embedding row; a larger one would be a token the model has no row for."""
    if ids.size > vocab_size:
        raise CheckpointError(
            f"{file}: {ids.where} has id {ids.largest}, but the model has {vocab_size} embedding rows (config.json "
            "vocab_size); the tokenizer does not belong to these weights. Use the tokenizer files of this model."
        )


def check_template_file(data: Any, file: str) -> None:
    """``chat_template.json``: one object with a string ``chat_template``."""
    Fields(data, file).str("chat_template")

