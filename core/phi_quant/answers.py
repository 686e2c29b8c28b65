"""Greedy answers to short chat questions: what a user sees, in the vendor runtime and in the oracle.

KL and perplexity say how far an export's distributions move; whether it still *answers the same*
is what a user notices. Each question is one user turn in the model's own chat template, answered
greedily for :data:`ANSWER_TOKENS` new tokens (or until an end token) by the runtime's own
``generate(..., chat=True)`` and by the fp32 oracle on the template rendered as transformers
renders it. Two answers agree when their texts are equal after stripping surrounding whitespace.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["QUESTIONS", "FRANCE", "ANSWER_TOKENS", "render_chat", "oracle_answer", "oracle_answers",
           "model_answers", "agreement"]

FRANCE = "What is the capital of France?"
#: Five short factual questions; real:smollm2's fp32 oracle answers each correctly (the Shakespeare
#: answer runs on past the 32 tokens), so a changed answer is a change a user would notice.
QUESTIONS = (
    FRANCE,
    "What is the capital of Japan?",
    "What is the capital of Germany?",
    "What is the chemical symbol for water?",
    "Who wrote Romeo and Juliet?",
)
#: New tokens per answer.
ANSWER_TOKENS = 32


def _special(tokenizer_config: dict[str, Any], key: str) -> str:
    value = tokenizer_config.get(key) or ""
    return value.get("content", "") if isinstance(value, dict) else str(value)


def render_chat(source: Any, user: str, system: str | None = None) -> str:
    """``user`` (after an optional ``system`` turn) in ``source``'s chat template, ready for the answer.

    Rendered as transformers' ``apply_chat_template`` does (sandboxed jinja, ``trim_blocks`` and
    ``lstrip_blocks``, the tokenizer's bos/eos strings).
    """
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = source.chat_template
    if not template:
        raise ValueError(f"{source.path} has no chat template")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    tc = getattr(source, "tokenizer_config", {}) or {}
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=_special(tc, "bos_token"), eos_token=_special(tc, "eos_token"))


def oracle_answer(oracle: Any, source: Any, question: str, max_new_tokens: int = ANSWER_TOKENS,
                  proposal: str = "") -> str:
    """The fp32 oracle's greedy answer (``oracle`` an :class:`phi_quant.oracle_cache.OracleCache`).

    ``proposal`` (an export's answer to the same question) lets the oracle verify it in one pass
    instead of running a pass per token; the answer is the oracle's whatever the proposal says.
    """
    tok = source.hf_tokenizer()
    ids = tok.encode(render_chat(source, question), add_special_tokens=False).ids
    ends = set(source.config.eos_token_ids)
    guess = tok.encode(proposal.strip(), add_special_tokens=False).ids if proposal.strip() else []
    new = oracle.greedy(ids, max_new_tokens, ends, proposal=guess)
    return tok.decode([t for t in new if t not in ends], skip_special_tokens=False)


def oracle_answers(oracle: Any, source: Any, questions: Sequence[str] = QUESTIONS,
                   max_new_tokens: int = ANSWER_TOKENS, proposals: Sequence[str] = ()) -> list[str]:
    guesses = list(proposals) or [""] * len(questions)
    return [oracle_answer(oracle, source, q, max_new_tokens, g) for q, g in zip(questions, guesses)]


def model_answers(model: Any, questions: Sequence[str] = QUESTIONS, max_new_tokens: int = ANSWER_TOKENS) -> list[str]:
    """Greedy answers of a loaded export (:class:`phi_quant.types.LoadedModel`) in its own runtime."""
    return [model.generate(q, max_new_tokens=max_new_tokens, chat=True) for q in questions]


def agreement(questions: Sequence[str], oracle: Sequence[str], model: Sequence[str],
              max_new_tokens: int = ANSWER_TOKENS) -> dict[str, Any]:
    """``{"agree": k, "of": n, "max_new_tokens": t, "items": [{question, oracle, model, same}]}``."""
    items = [{"question": q, "oracle": o.strip(), "model": m.strip(), "same": o.strip() == m.strip()}
             for q, o, m in zip(questions, oracle, model)]
    return {"agree": sum(i["same"] for i in items), "of": len(items), "max_new_tokens": max_new_tokens, "items": items}
