"""Hugging Face tokenizer files from a GGUF's byte-level BPE vocabulary (``tokenizer.ggml.model = gpt2``).

The GGUF holds the tokens, their types, the merges, the special ids, the chat template and the
name of the pre-tokenizer llama.cpp applies (``tokenizer.ggml.pre``). The ``tokenizers`` library
builds ``tokenizer.json`` from those; ``tokenizer_config.json`` and ``special_tokens_map.json``
carry the special tokens and the chat template. Pre-tokenizers are known by name, each as the
split llama.cpp performs for it (``llama-vocab.cpp``); an unknown name is refused rather than
guessed, because a wrong split gives plausible but different token ids.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from ..errors import UnsupportedModelError

__all__ = ["tokenizer_files", "PRE_TOKENIZERS"]


def _byte_level_gpt2() -> Any:
    from tokenizers import pre_tokenizers as pt

    return pt.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2() -> Any:
    # llama.cpp's "smollm" (also starcoder, refact, ...): every digit alone, then the GPT-2 split.
    from tokenizers import pre_tokenizers as pt

    return pt.Sequence([pt.Digits(individual_digits=True), _byte_level_gpt2()])


#: ``tokenizer.ggml.pre`` -> the equivalent ``tokenizers`` pre-tokenizer.
PRE_TOKENIZERS: dict[str, Callable[[], Any]] = {
    "default": _byte_level_gpt2,
    "gpt-2": _byte_level_gpt2,
    "smollm": _digits_then_gpt2,
    "starcoder": _digits_then_gpt2,
}


def _tokenizer_json(tokens: list[str], types: list[int], merges: list[str], pre: str, bos: int | None,
                    add_bos: bool, control: int, user_defined: int) -> dict[str, Any]:
    from tokenizers import AddedToken, Tokenizer, decoders, processors
    from tokenizers.models import BPE

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tok.decoder = decoders.ByteLevel()
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B",
                                                           special_tokens=[(tokens[bos], bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    added = [AddedToken(t, special=(k == control), normalized=False) for t, k in zip(tokens, types)
             if k in (control, user_defined)]
    tok.add_tokens(added)
    return json.loads(tok.to_str())


def tokenizer_files(f: Any) -> dict[str, Any]:
    """``{file name: JSON object}`` for tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    g, fields = f.gguf, f.fields
    k = g.Keys.Tokenizer
    model = fields.get(k.MODEL)
    if model != "gpt2":
        raise UnsupportedModelError(f"{f.path.name} has a {model!r} tokenizer; phi-quant re-lays byte-level BPE (gpt2) ones")
    pre = fields.get(k.PRE, "default")
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedModelError(f"{f.path.name} uses llama.cpp's {pre!r} pre-tokenizer, which phi-quant does not know; "
                                    f"known: {', '.join(sorted(PRE_TOKENIZERS))}")
    tokens: list[str] = list(fields[k.LIST])
    types = [int(t) for t in fields.get(k.TOKEN_TYPE, [g.TokenType.NORMAL] * len(tokens))]
    control, user_defined = int(g.TokenType.CONTROL), int(g.TokenType.USER_DEFINED)

    def token(key: str) -> str | None:
        i = fields.get(key)
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos = fields.get(k.BOS_ID)
    add_bos = bool(fields.get(k.ADD_BOS, False))
    tj = _tokenizer_json(tokens, types, list(fields.get(k.MERGES, [])), pre, bos, add_bos, control, user_defined)
    specials = {"bos_token": token(k.BOS_ID), "eos_token": token(k.EOS_ID), "unk_token": token(k.UNK_ID),
                "pad_token": token(k.PAD_ID)}
    specials = {name: t for name, t in specials.items() if t is not None}
    config: dict[str, Any] = {
        "add_bos_token": add_bos,
        "add_eos_token": bool(fields.get(k.ADD_EOS, False)),
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": types[i] == control}
            for i, t in enumerate(tokens) if types[i] in (control, user_defined)
        },
        **specials,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(fields.get(g.Keys.LLM.CONTEXT_LENGTH.format(arch=fields[g.Keys.General.ARCHITECTURE]),
                                           2048)),
        "tokenizer_class": "GPT2Tokenizer",
    }
    template = fields.get(k.CHAT_TEMPLATE)
    if template:
        config["chat_template"] = template
    return {"tokenizer.json": tj, "tokenizer_config.json": config, "special_tokens_map.json": specials}
