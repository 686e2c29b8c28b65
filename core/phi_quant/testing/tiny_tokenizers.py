"""Small, deterministic tokenizers shaped exactly like the real Phi ones.

Phi-3 / Phi-3.5 ship a SentencePiece BPE model with byte fallback (``tokenizer.model``) and a
``tokenizer.json`` converted from it (normaliser Prepend+Replace ``▁``, no pre-tokenizer). Phi-4
uses a byte-level BPE with the cl100k split regex, Phi-4-mini one with the o200k regex. We train
each on the bundled corpus (``data/tokenizer_corpus.txt``) so backends meet the same quirks as
with the real models: byte fallback, added special tokens after the base vocabulary, a model
vocabulary padded beyond the tokenizer, and the real chat templates.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..fidelity import eval_text

__all__ = [
    "CL100K_PATTERN",
    "O200K_PATTERN",
    "PHI3_CHAT_TEMPLATE",
    "PHI4_CHAT_TEMPLATE",
    "PHI4_MINI_CHAT_TEMPLATE",
    "TokenizerFiles",
    "corpus_text",
    "build_sentencepiece",
    "build_byte_level",
]

#: The split regex of the Phi-4 tokenizer.json (cl100k).
CL100K_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
#: The split regex of the Phi-4-mini tokenizer.json (o200k).
O200K_PATTERN = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
PHI4_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if (message['role'] == 'system') %}"
    "{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}"
    "{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' + message['content'] + '<|im_end|>'}}"
    "{% elif (message['role'] == 'assistant') %}{{'<|im_start|>assistant<|im_sep|>' + message['content'] + '<|im_end|>'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)
PHI4_MINI_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}"
    "{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

# Added tokens of Phi-3 / Phi-3.5, in id order after the SentencePiece vocabulary (32000.. in the real model).
PHI3_ADDED = [
    "<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
    "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>",
]
# Phi-4 (cl100k): <|endoftext|> then FIM tokens, the chat tokens, then dummies up to the vocab size.
PHI4_ADDED = [
    "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|dummy_0|>", "<|dummy_1|>",
    "<|dummy_2|>", "<|im_start|>", "<|im_end|>", "<|im_sep|>",
]
# Phi-4-mini (o200k): <|endoftext|>, reserved ids, then the chat/tool tokens.
PHI4_MINI_ADDED = [
    "<|endoftext|>", "<|endofprompt|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>", "<|tool|>",
    "<|/tool|>", "<|tool_call|>", "<|/tool_call|>", "<|tool_response|>", "<|tag|>",
]


@dataclass
class TokenizerFiles:
    """Everything a tokenizer contributes to a checkpoint directory."""

    tokenizer_json: dict[str, Any]
    tokenizer_config: dict[str, Any]
    special_tokens_map: dict[str, Any]
    added_tokens: dict[str, int]  # content -> id
    size: int  # number of ids the tokenizer knows (base + added)
    sentencepiece_model: bytes | None = None


def corpus_text() -> str:
    """The bundled training text: corpus page plus the evaluation passage."""
    corpus = resources.files("phi_quant").joinpath("data/tokenizer_corpus.txt").read_text(encoding="utf-8")
    return corpus + "\n" + eval_text()


def _added_token(content: str, idx: int, special: bool = True, rstrip: bool = False) -> dict[str, Any]:
    return {
        "id": idx, "content": content, "single_word": False, "lstrip": False, "rstrip": rstrip,
        "normalized": False, "special": special,
    }


def _added_decoder(tokens: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in tokens
    }


def _special_tokens_map(*, bos: str, eos: str, pad: str, unk: str) -> dict[str, Any]:
    """special_tokens_map.json as transformers saves it: each token with its matching flags off."""
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {key: {"content": content, **flags}
            for key, content in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad), ("unk_token", unk))}


def _train_sentencepiece(base_size: int) -> bytes:
    import sentencepiece as spm

    lines = [line for line in corpus_text().splitlines() if line.strip()]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, model_type="bpe", vocab_size=base_size,
        byte_fallback=True, character_coverage=1.0, split_digits=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", allow_whitespace_only_pieces=True,
        num_threads=1, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, max_sentencepiece_length=16,
        hard_vocab_limit=False, minloglevel=2,
    )
    return out.getvalue()


def _sentencepiece_to_json(model: bytes, added: list[dict[str, Any]]) -> dict[str, Any]:
    """tokenizer.json for a SentencePiece BPE model, as Hugging Face's Llama converter writes it.

    Merges come from the vocabulary: every split of a piece into two pieces is a merge, ranked
    by the merged piece's score (SentencePiece BPE merges the highest-scoring pair first).
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    scores = [sp.get_score(i) for i in range(n)]
    merges = []
    for piece, pid in vocab.items():
        if sp.is_control(pid) or sp.is_unknown(pid) or sp.is_byte(pid) or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-scores[pid], pid, vocab[left], vocab[right], left, right))
    merges.sort()
    # As in Phi-3's tokenizer.json: </s> is not special and swallows whitespace after it.
    specials = [
        _added_token(sp.id_to_piece(0), 0),
        _added_token(sp.id_to_piece(1), 1),
        _added_token(sp.id_to_piece(2), 2, special=False, rstrip=True),
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": specials + added,
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[m[4], m[5]] for m in merges],
        },
    }


def build_sentencepiece(*, base_size: int = 480, model_max_length: int = 4096) -> TokenizerFiles:
    """Phi-3-style tokenizer: SentencePiece BPE + byte fallback, <unk>/<s>/</s>, Phi-3 added tokens."""
    model = _train_sentencepiece(base_size)
    # Phi-3's chat tokens (all but <|endoftext|>) have rstrip: the newline the chat template puts
    # after <|user|>, <|end|>, ... is absorbed into the special token and never becomes a token.
    added = [_added_token(t, base_size + i, rstrip=t != "<|endoftext|>") for i, t in enumerate(PHI3_ADDED)]
    tj = _sentencepiece_to_json(model, added)
    all_added = tj["added_tokens"]
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": _added_decoder(all_added),
        "bos_token": "<s>",
        "chat_template": PHI3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "legacy": False,
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    special_map = _special_tokens_map(bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>")
    return TokenizerFiles(
        tokenizer_json=tj,
        tokenizer_config=config,
        special_tokens_map=special_map,
        added_tokens={t["content"]: t["id"] for t in all_added},
        size=base_size + len(PHI3_ADDED),
        sentencepiece_model=model,
    )


def _train_byte_level(pattern: str, base_size: int) -> dict[str, Any]:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=base_size, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(corpus_text().splitlines(keepends=True), trainer=trainer)
    return json.loads(tok.to_str())


def build_byte_level(
    *, flavour: str, base_size: int, vocab_size: int, model_max_length: int
) -> TokenizerFiles:
    """Phi-4 (``flavour="phi4"``, cl100k regex) or Phi-4-mini (``"phi4-mini"``, o200k regex) tokenizer."""
    pattern = CL100K_PATTERN if flavour == "phi4" else O200K_PATTERN
    tj = _train_byte_level(pattern, base_size)
    n = len(tj["model"]["vocab"])
    if flavour == "phi4":
        names = list(PHI4_ADDED)
        # Phi-4 fills every id up to vocab_size with dummy tokens: tokenizer size == vocab_size.
        names += [f"<|dummy_{i}|>" for i in range(3, 3 + vocab_size - n - len(names))]
        template, bos, eos, pad, unk = PHI4_CHAT_TEMPLATE, "<|endoftext|>", "<|im_end|>", names[-1], "<|endoftext|>"
    else:
        names = list(PHI4_MINI_ADDED)
        template, bos, eos, pad, unk = PHI4_MINI_CHAT_TEMPLATE, "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>"
    added = [_added_token(t, n + i) for i, t in enumerate(names)]
    tj["added_tokens"] = added
    tj["normalizer"] = None
    tj["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tj["model"].update({"dropout": None, "unk_token": None, "fuse_unk": False, "byte_fallback": False,
                        "ignore_merges": False, "continuing_subword_prefix": "", "end_of_word_suffix": ""})
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": _added_decoder(added),
        "bos_token": bos,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "model_max_length": model_max_length,
        "pad_token": pad,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": unk,
    }
    special_map = _special_tokens_map(bos=bos, eos=eos, pad=pad, unk=unk)
    return TokenizerFiles(
        tokenizer_json=tj,
        tokenizer_config=config,
        special_tokens_map=special_map,
        added_tokens={t["content"]: t["id"] for t in added},
        size=n + len(names),
    )
