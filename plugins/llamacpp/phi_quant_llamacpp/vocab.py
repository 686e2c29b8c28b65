"""Tokenizer metadata for GGUF: the vocabulary, merges, special ids and chat template.

llama.cpp re-implements tokenization from what the GGUF says, so everything that decides how a
string becomes ids must be carried over: SentencePiece-style vocabularies (byte fallback, ``▁`` for
space) as ``llama`` with scores, byte-level BPE as ``gpt2`` with merges and a named pre-tokenizer.
The tests check the ids llama.cpp produces against the Hugging Face tokenizer's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi_quant.errors import UnsupportedModelError

from .constants import (DIGITS_SPLIT, GPT2_PATTERN, LLAMA_EOG_TEXTS, PRE_TOKENIZER_SEQUENCES, PRE_TOKENIZERS, Key,
                        TokenType, ValueType)
from .gguf_file import Typed

__all__ = ["GGUFVocab", "build_vocab", "pre_tokenizer_name"]


@dataclass
class GGUFVocab:
    """The tokenizer as GGUF metadata (``metadata`` is ready to merge into the file's KV)."""

    model: str  # "llama" | "gpt2"
    pre: str
    size: int  # rows written (= config vocab_size)
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _split_patterns(pre: dict | None) -> list[str]:
    """The regex patterns a tokenizer.json pre-tokenizer splits with, in order."""
    if not pre:
        return []
    kind = pre.get("type")
    if kind == "Sequence":
        out: list[str] = []
        for p in pre.get("pretokenizers", []):
            out += _split_patterns(p)
        return out
    if kind == "Split":
        pat = pre.get("pattern", {})
        if "Regex" in pat:
            return [pat["Regex"]]
        return [f"<literal {pat.get('String')!r}>"]
    if kind == "ByteLevel" and pre.get("use_regex", True):
        return [GPT2_PATTERN]
    if kind == "ByteLevel":
        return []
    if kind == "Digits" and pre.get("individual_digits"):
        return [DIGITS_SPLIT]
    return [f"<{kind}>"]


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """The ``tokenizer.ggml.pre`` llama.cpp implements with this tokenizer's split regex.

    Raises :class:`UnsupportedModelError` when no llama.cpp pre-tokenizer has the same regex,
    rather than writing a GGUF whose tokenization would silently differ.
    """
    patterns = _split_patterns(tokenizer_json.get("pre_tokenizer"))
    if len(patterns) == 1 and patterns[0] in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[patterns[0]]
    if tuple(patterns) in PRE_TOKENIZER_SEQUENCES:
        return PRE_TOKENIZER_SEQUENCES[tuple(patterns)]
    known = sorted(set(PRE_TOKENIZERS.values()) | set(PRE_TOKENIZER_SEQUENCES.values()))
    raise UnsupportedModelError(
        "the tokenizer's pre-tokenizer split "
        f"{patterns or ['(none)']} matches no pre-tokenizer llama.cpp implements "
        f"(known: {', '.join(known)}); "
        "llama.cpp would tokenize differently from Hugging Face. Use another backend for this model."
    )


def _is_byte_level(tj: dict) -> bool:
    def walk(p: dict | None) -> bool:
        if not p:
            return False
        if p.get("type") == "ByteLevel":
            return True
        return any(walk(x) for x in p.get("pretokenizers", []))

    return walk(tj.get("pre_tokenizer"))


def _token_id(name: Any, table: dict[str, int]) -> int | None:
    if isinstance(name, dict):
        name = name.get("content")
    return table.get(name) if isinstance(name, str) else None


def _bos_from_post_processor(tj: dict, table: dict[str, int]) -> int | None:
    """The BOS id the HF post-processor prepends (None when it prepends nothing)."""
    post = tj.get("post_processor") or {}
    procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for p in procs:
        if p.get("type") == "TemplateProcessing":
            single = p.get("single") or []
            if single and "SpecialToken" in single[0]:
                return table.get(single[0]["SpecialToken"]["id"])
    return None


def _sentencepiece_pieces(path: Path, n: int) -> tuple[list[str], list[float], list[int]] | None:
    """Pieces, scores and types from ``tokenizer.model`` (as llama.cpp's converter reads them)."""
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:  # pragma: no cover - sentencepiece is a declared dependency
        return None
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(path))
    tokens, scores, types = [], [], []
    for i in range(min(n, sp.vocab_size())):
        tokens.append(sp.IdToPiece(i))
        scores.append(float(sp.GetScore(i)))
        if sp.IsUnknown(i):
            types.append(TokenType.UNKNOWN)
        elif sp.IsControl(i):
            types.append(TokenType.CONTROL)
        elif sp.IsUnused(i):
            types.append(TokenType.UNUSED)
        elif sp.IsByte(i):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
    return tokens, scores, types


def _json_spm_pieces(model: dict) -> tuple[list[str], list[float], list[int]]:
    """Pieces from a tokenizer.json SentencePiece-BPE model; scores from merge ranks.

    llama.cpp's SPM tokenizer merges the adjacent pair whose result scores highest; scoring each
    piece by minus the rank of the merge that makes it gives the same order as the HF merges.
    """
    vocab: dict[str, int] = model["vocab"]
    if model.get("type") == "Unigram":
        pieces = model["vocab"]
        return [p for p, _ in pieces], [float(s) for _, s in pieces], [TokenType.NORMAL] * len(pieces)
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    for t, i in vocab.items():
        tokens[i] = t
    scores = [0.0] * n
    for rank, m in enumerate(model.get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        i = vocab.get(a + b)
        if i is not None and scores[i] == 0.0:
            scores[i] = -float(rank + 1)
    types = []
    for t in tokens:
        if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
    unk = model.get("unk_token")
    if unk in vocab:
        types[vocab[unk]] = TokenType.UNKNOWN
    return tokens, scores, types


def build_vocab(
    tokenizer_files: dict[str, Path],
    tokenizer_config: dict,
    vocab_size: int,
    *,
    config_bos: int | None = None,
    config_eos: tuple[int, ...] = (),
    config_pad: int | None = None,
    chat_template: str | None = None,
    stop_ids: tuple[int, ...] = (),
) -> GGUFVocab:
    """Build the GGUF tokenizer metadata, padding unused ids up to ``vocab_size`` embedding rows."""
    if "tokenizer.json" not in tokenizer_files:
        raise UnsupportedModelError("the checkpoint has no tokenizer.json; llama.cpp needs the vocabulary to run it")
    tj = json.loads(Path(tokenizer_files["tokenizer.json"]).read_text(encoding="utf-8"))
    model = tj.get("model", {})
    added = sorted(tj.get("added_tokens", []), key=lambda a: a["id"])
    notes: list[str] = []

    if _is_byte_level(tj):
        kind, pre = "gpt2", pre_tokenizer_name(tj)
        if model.get("type") != "BPE":
            raise UnsupportedModelError(f"byte-level tokenizer with a {model.get('type')} model is not supported by llama.cpp's gpt2 vocab")
        vocab: dict[str, int] = model["vocab"]
        n = max([*vocab.values(), *(a["id"] for a in added)]) + 1
        tokens = [f"[PAD{i}]" for i in range(n)]
        types = [TokenType.UNUSED] * n
        for t, i in vocab.items():
            tokens[i], types[i] = t, TokenType.NORMAL
        scores = None
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    else:
        kind, pre, merges = "llama", "default", None
        spm = None
        if "tokenizer.model" in tokenizer_files:
            spm = _sentencepiece_pieces(Path(tokenizer_files["tokenizer.model"]), vocab_size)
        if spm is None:
            if model.get("type") not in ("BPE", "Unigram"):
                raise UnsupportedModelError(f"tokenizer model {model.get('type')!r} is neither SentencePiece nor byte-level BPE")
            spm = _json_spm_pieces(model)
            notes.append("SentencePiece scores derived from tokenizer.json merge ranks (no tokenizer.model)")
        tokens, scores, types = (list(x) for x in spm)
        meta = tj.get("pre_tokenizer") or {}
        if meta.get("type") == "Metaspace" and meta.get("prepend_scheme") == "first":
            notes.append(
                "tokenizer.json prepends '▁' only to the first text segment (Metaspace 'first'); llama.cpp, like "
                "SentencePiece, prepends it after every special token too, so ids can differ right after special tokens"
            )
        n = max([len(tokens), *(a["id"] + 1 for a in added)])
        while len(tokens) < n:
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-10000.0)
            types.append(TokenType.UNUSED)

    for a in added:
        i = a["id"]
        tokens[i] = a["content"]
        types[i] = TokenType.CONTROL if a.get("special") else TokenType.USER_DEFINED
        if scores is not None:
            scores[i] = -1000.0

    if n > vocab_size:
        raise UnsupportedModelError(f"the tokenizer has {n} ids but the embedding only {vocab_size} rows")
    if n < vocab_size:
        notes.append(f"vocabulary padded: {n} tokenizer ids, {vocab_size} embedding rows ([PADn] unused tokens)")
        for i in range(n, vocab_size):
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            if scores is not None:
                scores.append(-10000.0)

    table = {t: i for i, t in enumerate(tokens)}
    md: dict[str, Any] = {
        Key.TOKENIZER_MODEL: kind,
        Key.TOKENIZER_PRE: pre,
        Key.TOKENS: tokens,
    }
    if scores is not None:
        md[Key.SCORES] = Typed(scores, ValueType.FLOAT32)
    md[Key.TOKEN_TYPES] = Typed([int(t) for t in types], ValueType.INT32)
    if merges is not None:
        md[Key.MERGES] = Typed(merges, ValueType.STRING)

    post_bos = _bos_from_post_processor(tj, table)
    bos = _token_id(tokenizer_config.get("bos_token"), table)
    if bos is None:
        bos = post_bos if post_bos is not None else config_bos
    eos = _token_id(tokenizer_config.get("eos_token"), table)
    if eos is None and config_eos:
        eos = config_eos[0]
    pad = _token_id(tokenizer_config.get("pad_token"), table)
    if pad is None:
        pad = config_pad
    unk = _token_id(tokenizer_config.get("unk_token"), table)
    eot = table.get("<|end|>")
    for key, value in ((Key.BOS_ID, bos), (Key.EOS_ID, eos), (Key.EOT_ID, eot), (Key.UNK_ID, unk), (Key.PAD_ID, pad)):
        if value is not None:
            md[key] = Typed(int(value), ValueType.UINT32)
    # transformers' Llama tokenizers rebuild the post-processor from an explicit add_bos_token
    add_bos = bool(tokenizer_config["add_bos_token"]) if "add_bos_token" in tokenizer_config else post_bos is not None
    stops = sorted({int(i) for i in stop_ids if 0 <= int(i) < len(tokens)})
    if stops:
        md[Key.STOP_IDS] = Typed(stops, ValueType.UINT32)
        ends = {eos, eot} | {table[t] for t in LLAMA_EOG_TEXTS if t in table}
        missing = [f"{i} {tokens[i]!r}" for i in stops if i not in ends]
        if missing:
            notes.append(
                f"generation_config stops at {', '.join(missing)} too; GGUF has no key for that, so llama.cpp "
                f"tools will not stop there (phi-quant run does: {Key.STOP_IDS})"
            )
    md[Key.ADD_BOS] = add_bos
    md[Key.ADD_EOS] = False
    if chat_template:
        md[Key.CHAT_TEMPLATE] = chat_template
    return GGUFVocab(model=kind, pre=pre, size=vocab_size, metadata=md, notes=notes)
