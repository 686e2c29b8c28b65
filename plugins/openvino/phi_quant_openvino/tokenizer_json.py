"""Read a checkpoint's tokenizer files with ``json`` and say what transformers would make of them.

openvino_tokenizers converts a transformers tokenizer object; all it reads from that object is a
handful of attributes (added tokens and their strip flags, the special token ids, padding and
truncation sides, the maximum length) and the object's ``tokenizer.json``. For the tokenizer
kinds phi-quant's checkpoints carry, those attributes follow directly from ``tokenizer.json``
and ``tokenizer_config.json``, so :func:`read_tokenizer` works them out without importing
transformers (0.5-1.5 CPU-s at import) and without the converter's save-and-reload of the files.

Anything whose effect on transformers' object this module has not pinned raises
:class:`Untranslatable`; the caller then takes the vendor route (transformers + convert_tokenizer).
The byte-identity tests in ``tests/test_tokenizer_ir.py`` pin the translation against that route.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["AddedToken", "TokenizerFacts", "Untranslatable", "read_tokenizer", "transformers_version"]

#: transformers fills model_max_length with this when tokenizer_config.json has none.
_NO_MAX_LENGTH = int(1e30)

#: tokenizer_config.json keys known not to change the tokenizer object transformers builds from
#: tokenizer.json (or whose effect :func:`read_tokenizer` reproduces). Any other key: vendor route.
_CONFIG_KEYS = frozenset({
    "add_bos_token", "add_eos_token", "add_prefix_space", "added_tokens_decoder", "bos_token", "chat_template",
    "clean_up_tokenization_spaces", "eos_token", "legacy", "model_max_length", "pad_token", "padding_side",
    "sp_model_kwargs", "tokenizer_class", "truncation_side", "unk_token", "use_default_system_prompt",
})
_SPECIAL_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


class Untranslatable(Exception):
    """The tokenizer files use something the transformers-free builder does not translate."""


@dataclass(frozen=True)
class AddedToken:
    id: int
    content: str
    lstrip: bool
    rstrip: bool
    special: bool


@dataclass(frozen=True)
class TokenizerFacts:
    """What the converter reads from a transformers tokenizer object, taken from the files."""

    tokenizer_json: dict[str, Any]
    added: tuple[AddedToken, ...]  # by id, as transformers' added_tokens_decoder
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token: str | None
    pad_token_id: int | None
    padding_left: bool
    truncation_right: bool
    model_max_length: int
    chat_template: str | None


def transformers_version() -> tuple[int, ...] | None:
    """The installed transformers' version as numbers (from its metadata: nothing is imported)."""
    try:
        text = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None
    parts = []
    for piece in text.split(".")[:3]:
        digits = re.match(r"\d+", piece)  # "0rc1" counts as 0
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Untranslatable(f"{path.name} could not be read ({exc})") from exc


def _token_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise Untranslatable(f"special token {value!r} is neither a string nor an AddedToken object")


def _added_tokens(tj: dict[str, Any], config: dict[str, Any], files: dict[str, Path]) -> tuple[AddedToken, ...]:
    try:
        added = tuple(AddedToken(int(t["id"]), t["content"], bool(t["lstrip"]), bool(t["rstrip"]), bool(t["special"]))
                      for t in tj.get("added_tokens") or [])
    except (KeyError, TypeError, ValueError) as exc:
        raise Untranslatable(f"an added token lacks a field ({exc})") from exc
    ids = [t.id for t in added]
    if ids != sorted(set(ids)):  # transformers re-saves them by id; the converter reads that order
        raise Untranslatable("tokenizer.json's added tokens are not in increasing id order")
    decoder = config.get("added_tokens_decoder")
    if decoder is not None:  # transformers merges these in: they must say the same
        try:
            theirs = {(int(i), d["content"], bool(d["lstrip"]), bool(d["rstrip"]), bool(d["special"]))
                      for i, d in decoder.items()}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise Untranslatable(f"tokenizer_config.json's added_tokens_decoder is malformed ({exc})") from exc
        if theirs != {(t.id, t.content, t.lstrip, t.rstrip, t.special) for t in added}:
            raise Untranslatable("tokenizer_config.json's added_tokens_decoder differs from tokenizer.json")
    if "added_tokens.json" in files:
        extra = _read(files["added_tokens.json"])
        known = {t.content: t.id for t in added}
        if not isinstance(extra, dict) or any(known.get(k) != v for k, v in extra.items()):
            raise Untranslatable("added_tokens.json names tokens tokenizer.json does not add")
    return added


def _special_tokens(config: dict[str, Any], files: dict[str, Path]) -> dict[str, str | None]:
    roles = {role: _token_text(config.get(role)) for role in _SPECIAL_ROLES}
    if "special_tokens_map.json" in files:
        smap = _read(files["special_tokens_map.json"])
        if not isinstance(smap, dict) or set(smap) - set(_SPECIAL_ROLES):
            raise Untranslatable("special_tokens_map.json holds more than bos/eos/pad/unk tokens")
        for role, value in smap.items():
            if _token_text(value) != roles[role]:
                raise Untranslatable(f"special_tokens_map.json and tokenizer_config.json disagree on {role}")
    return roles


def _check_flags(config: dict[str, Any], tj: dict[str, Any]) -> None:
    """Options transformers applies to the backend tokenizer on load: only their no-op values pass."""
    for key in ("add_bos_token", "add_eos_token"):
        if config.get(key, False) is not False:
            raise Untranslatable(f"tokenizer_config.json sets {key}")
    if "add_prefix_space" in config:
        pre = tj.get("pre_tokenizer") or {}
        levels = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
        if any(p.get("type") == "ByteLevel" and bool(p.get("add_prefix_space")) != config["add_prefix_space"]
               for p in levels) or not any(p.get("type") == "ByteLevel" for p in levels):
            raise Untranslatable("tokenizer_config.json's add_prefix_space differs from the pre-tokenizer's")
    if tj.get("truncation") is not None or tj.get("padding") is not None:
        raise Untranslatable("tokenizer.json enables truncation or padding")


def _chat_template(config: dict[str, Any], files: dict[str, Path], given: str | None) -> str | None:
    """The template the vendor route stores: transformers' own, else the one the caller passes."""
    own = config.get("chat_template")
    if own is None:
        return given  # a template file alone: transformers reads the same text the caller passes
    if not isinstance(own, str) or any(name in files for name in _TEMPLATE_FILES):
        raise Untranslatable("the chat template is a list or is given in more than one file")
    return own


def read_tokenizer(files: dict[str, Path], chat_template: str | None) -> TokenizerFacts:
    """The facts the converter would read from ``PreTrainedTokenizerFast.from_pretrained``.

    :raises Untranslatable: when something in the files is outside what this module reproduces.
    """
    version = transformers_version()  # 5.7 on: BPE decoding never cleans up spaces, whatever the config says
    if version is not None and version < (5, 7):  # older: another class name and other clean-up rules
        raise Untranslatable(f"transformers {'.'.join(map(str, version))} is older than 5.7")
    tj = _read(files["tokenizer.json"])
    config = _read(files["tokenizer_config.json"]) if "tokenizer_config.json" in files else {}
    if not isinstance(tj, dict) or not isinstance(config, dict):
        raise Untranslatable("a tokenizer file does not hold a JSON object")
    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise Untranslatable(f"tokenizer_config.json sets {', '.join(unknown[:3])}")
    _check_flags(config, tj)
    added = _added_tokens(tj, config, files)
    roles = _special_tokens(config, files)
    by_text = {t.content: t for t in added}
    for role, text in roles.items():  # transformers would add a missing one, or mark it special
        if text is not None and (text not in by_text or not by_text[text].special):
            raise Untranslatable(f"{role} {text!r} is not a special added token of tokenizer.json")
    max_length = config.get("model_max_length", _NO_MAX_LENGTH)
    side_pad, side_trunc = config.get("padding_side", "right"), config.get("truncation_side", "right")
    if not isinstance(max_length, int) or side_pad not in ("left", "right") or side_trunc not in ("left", "right"):
        raise Untranslatable("model_max_length, padding_side or truncation_side has an unexpected value")

    def ident(role: str) -> int | None:
        return None if roles[role] is None else by_text[roles[role]].id

    return TokenizerFacts(
        tokenizer_json=tj, added=added, bos_token_id=ident("bos_token"), eos_token_id=ident("eos_token"),
        pad_token=roles["pad_token"], pad_token_id=ident("pad_token"), padding_left=side_pad == "left",
        truncation_right=side_trunc == "right", model_max_length=max_length,
        chat_template=_chat_template(config, files, chat_template),
    )
