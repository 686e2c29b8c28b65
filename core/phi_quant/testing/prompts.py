"""The prompts every backend is measured on, per tiny variant.

They cover what breaks tokenizers and positions: plain ASCII, accented Latin and CJK text
(byte fallback in the SentencePiece variants), emoji (multi-byte, some with variation
selectors), a chat-formatted prompt rendered with the variant's real chat template, and on the
LongRoPE variants a prompt longer than ``original_max_position_embeddings`` so the long factors
are exercised.
"""

from __future__ import annotations

from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..fidelity import EVAL_TEXT
from . import tiny_tokenizers as tt
from .factory import variant_spec

__all__ = ["test_prompts", "chat_prompt", "LONG_PROMPT"]

ASCII_PROMPT = "The quick brown fox jumps over the lazy dog. What is the capital of France?"
UNICODE_PROMPT = "Café déjà vu, naïve Straße: 東京は首都です。你好！"
EMOJI_PROMPT = "Emoji in chat: 🙂 👍 🚀 ❤️ ✨ and a flag 🇫🇷."
#: Tokenizes to well over 64 tokens (the tiny LongRoPE variants' original context) with every tiny
#: tokenizer, and to under 256 (checked by tests).
LONG_PROMPT = " ".join(EVAL_TEXT.split())[:420]

_TEMPLATES = {"spm": tt.PHI3_CHAT_TEMPLATE, "phi4": tt.PHI4_CHAT_TEMPLATE, "phi4-mini": tt.PHI4_MINI_CHAT_TEMPLATE}
_EOS = {"spm": "<|endoftext|>", "phi4": "<|im_end|>", "phi4-mini": "<|endoftext|>"}


def chat_prompt(variant: str, user: str = "Write one sentence about the sea.",
                system: str | None = "You are a helpful assistant.") -> str:
    """A conversation rendered with the variant's chat template, ready for generation."""
    spec = variant_spec(variant)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    template = ImmutableSandboxedEnvironment().from_string(_TEMPLATES[spec.tokenizer])
    return template.render(messages=messages, add_generation_prompt=True, eos_token=_EOS[spec.tokenizer])


def test_prompts(variant: str) -> list[str]:
    """Prompts for ``variant``: ASCII, Unicode, emoji, chat, plus a long one on LongRoPE variants."""
    spec = variant_spec(variant)
    prompts = [ASCII_PROMPT, UNICODE_PROMPT, EMOJI_PROMPT, chat_prompt(variant)]
    if spec.longrope:
        prompts.append(LONG_PROMPT)
    return prompts


test_prompts.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one
