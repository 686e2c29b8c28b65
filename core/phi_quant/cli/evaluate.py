"""``phi-quant eval OUT --reference MODEL``: fidelity against the fp32 oracle, size and speed.

The exported model runs first (load time, tokens/s and peak RSS describe the exported model alone:
the RSS is taken before any oracle data is read); the fp32 numpy oracle's logits for the same token
ids come from :class:`phi_quant.oracle_cache.OracleCache` (computed once per model and sequence),
and next-token distributions are compared at every position: on the test prompts (``kl_mean``,
``top1_agreement``, ...) and on the text (``text_kl_mean``, ``text_top1_agreement``).

Perplexity is scored on the first N tokens of a text in non-overlapping windows, each run from
position 0, so every backend sees the same sequences. Built-in models choose the defaults
(:func:`phi_quant.builtin.eval_defaults`): ``real:`` models the evaluation text of
:mod:`phi_quant.texts`, 2048 tokens in 512-token windows, plus greedy answers to the five chat
questions of :mod:`phi_quant.answers` compared with the oracle's; tiny models and other checkpoints
the bundled passage, 256 tokens in one window, no answers. The text's files and sha256 go into the result.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import BadInputError
from ..manifest import model_bytes, read_manifest
from ..options import check_runtime_options
from ..verify import require_intact
from ._common import emit_json, fmt_bytes, json_option
from .run import open_output

__all__ = ["command", "evaluate", "eval_prompts", "bundled_text"]


def bundled_text() -> str:
    """The English passage shipped with phi-quant for perplexity."""
    from ..fidelity import eval_text

    return eval_text()


def _text_plan(reference: str, text: Any, max_text_tokens: int | None, window: int | None) -> tuple[Any, int, int]:
    """(SourceText, tokens to score, window) from the options, falling back to the model's defaults."""
    from ..builtin import eval_defaults
    from ..texts import SourceText

    defaults = eval_defaults(reference)
    if text is None:
        text = defaults.text()
    elif isinstance(text, str):
        text = SourceText("given", text, ())
    tokens = defaults.tokens if max_text_tokens is None else max_text_tokens
    win = window if window is not None else min(defaults.window, tokens)
    if tokens < 2 or win < 2:
        raise BadInputError(f"perplexity needs at least 2 tokens and a window of at least 2 (got {tokens} and {win})")
    return text, tokens, win


def _peak_rss_bytes() -> int:
    """This process's peak RSS: the kernel's high-water mark of our own address space (``VmHWM``).

    ``ru_maxrss`` is not used on Linux: it carries the peak of the process we were forked from
    across ``exec`` (from ``compare``, or a Ray worker, that was the parent's RSS, not the model's).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def eval_prompts(reference: str, source: Any) -> list[str]:
    """The test prompts: the tiny variant's own set, or the same kinds rendered for any checkpoint."""
    from ..convert import TINY_PREFIX
    from ..testing import prompts as tp

    if str(reference).startswith(TINY_PREFIX):
        return list(tp.test_prompts(str(reference)[len(TINY_PREFIX):]))
    out = [tp.ASCII_PROMPT, tp.UNICODE_PROMPT, tp.EMOJI_PROMPT]
    if getattr(source, "chat_template", None):
        from ..answers import render_chat

        try:
            out.append(render_chat(source, "Write one sentence about the sea.", system="You are a helpful assistant."))
        except Exception:  # noqa: BLE001 - an odd template only costs the chat prompt
            pass
    if source.config.rope.is_longrope:
        out.append(tp.LONG_PROMPT)
    return out


def provenance_warnings(manifest: dict[str, Any], reference: str, source: Any) -> list[str]:
    """Say so when the reference is not the checkpoint the output was converted from."""
    from ..manifest import source_record

    made_from = manifest.get("source", {})
    now = source_record(str(reference), source)
    warnings = []
    for name, entry in made_from.get("files", {}).items():
        current = now["files"].get(name)
        if current is not None and current["sha256"] != entry.get("sha256"):
            warnings.append(f"{name} of the reference differs from the one {manifest['backend']['name']} output was made from")
    if made_from.get("weights_bytes") and made_from["weights_bytes"] != now["weights_bytes"]:
        warnings.append(f"the reference has {now['weights_bytes']} bytes of weights, the output was made from "
                        f"{made_from['weights_bytes']}")
    return warnings


def evaluate(output: Path, reference: str, *, text: Any = None, max_text_tokens: int | None = None,
             window: int | None = None, gen_tokens: int = 32, context_length: int | None = None,
             threads: int | None = None, answers: bool | None = None) -> dict[str, Any]:
    """Measure one output directory against the oracle built from ``reference``.

    ``text`` is a :class:`phi_quant.texts.SourceText`, a string, or None for the reference's
    default; ``max_text_tokens``, ``window`` and ``answers`` (greedy answers to the chat questions
    of :mod:`phi_quant.answers`) default per model (see the module docstring). The oracle's results
    come from :class:`phi_quant.oracle_cache.OracleCache`, so it runs once per model and token sequence.
    """
    from .. import answers as qa
    from ..builtin import eval_defaults
    from ..convert import open_source
    from ..fidelity import FidelityAccumulator, compare_logits, text_windows, token_nll
    from ..oracle_cache import OracleCache

    check_runtime_options(context_length=context_length, threads=threads, max_text_tokens=max_text_tokens,
                          gen_tokens=gen_tokens)
    manifest_only = read_manifest(output)
    require_intact(Path(output), manifest_only, full=True)  # before the slow oracle: a damaged output is named
    with open_source(reference) as src:
        made_from = manifest_only.get("source", {}).get("parameters")
        if made_from is not None and made_from != src.config.parameter_count():
            raise BadInputError(
                f"--reference {reference} has {src.config.parameter_count():,} parameters but {output} was converted "
                f"from a model with {made_from:,}; pass the checkpoint it was made from "
                f"({manifest_only['source'].get('model')})"
            )
        tok = src.hf_tokenizer()
        prompts = eval_prompts(reference, src)
        seqs: list[list[int]] = [tok.encode(p, add_special_tokens=False).ids for p in prompts]
        seqs = [s for s in seqs if len(s) >= 2]
        source_text, n_text, win = _text_plan(reference, text, max_text_tokens, window)
        text_ids = tok.encode(source_text.text, add_special_tokens=False).ids[:n_text]
        windows = text_windows(text_ids, win) if len(text_ids) >= 2 else []
        if answers is None:
            answers = eval_defaults(reference).answers
        if answers and not src.chat_template:
            raise BadInputError(f"--answers needs a chat template and {reference} has none; pass --no-answers")
        oracle = OracleCache(src)

        # The export alone first: load time, tokens/s and peak RSS describe it, not the oracle.
        t0 = time.perf_counter()
        backend, model, manifest = open_output(output, context_length=context_length, threads=threads)
        load_s = time.perf_counter() - t0
        try:
            cand, n_tok, t_prompt = [], 0, 0.0
            for ids in seqs:
                t1 = time.perf_counter()
                cand.append(np.asarray(model.logits(ids), dtype=np.float32))
                t_prompt += time.perf_counter() - t1
                n_tok += len(ids)
            t2 = time.perf_counter()
            generated = model.generate(prompts[0], max_new_tokens=gen_tokens)
            t_gen = time.perf_counter() - t2
            n_gen = max(1, len(model.tokenize(generated))) if generated else 0
            # Then the text, one window at a time next to the oracle's logits of the same window; the
            # peak RSS is taken once the export has run a whole window, before any oracle data is read.
            peak_rss = None
            on_text, cand_nll, ref_nll = FidelityAccumulator(), [], []
            for w in windows:
                c = np.asarray(model.logits(w), dtype=np.float32)
                if peak_rss is None:
                    peak_rss = _peak_rss_bytes()
                r = oracle.logits(w)
                on_text.add(r, c)
                cand_nll.append(token_nll(c, w))
                ref_nll.append(token_nll(r, w))
                del c, r
            if peak_rss is None:
                peak_rss = _peak_rss_bytes()
            model_says = qa.model_answers(model) if answers else None
        finally:
            model.close()
        warnings = provenance_warnings(manifest, reference, src)
        ref = [oracle.logits(ids) for ids in seqs]
        oracle_says = qa.oracle_answers(oracle, src, proposals=model_says) if answers else None
        oracle.close()
    report = compare_logits(np.concatenate(ref), np.concatenate(cand))
    fidelity = {k: float(getattr(report, k)) for k in ("kl_mean", "kl_max", "top1_agreement", "cosine_mean", "max_abs_diff")}
    fidelity["positions"] = int(getattr(report, "positions", sum(len(s) for s in seqs)))
    fidelity["prompts"] = len(seqs)
    if windows:
        nll, rnll = np.concatenate(cand_nll), np.concatenate(ref_nll)
        t = on_text.report()
        fidelity["perplexity"] = float(np.exp(nll.mean()))
        fidelity["reference_perplexity"] = float(np.exp(rnll.mean()))
        fidelity["text_tokens"] = len(text_ids)
        fidelity["text_kl_mean"], fidelity["text_kl_max"] = t.kl_mean, t.kl_max
        fidelity["text_top1_agreement"], fidelity["text_positions"] = t.top1_agreement, t.positions
        fidelity["text"] = {**source_text.record(), "tokens": len(text_ids), "window": win, "windows": len(windows),
                            "scored_tokens": int(nll.size)}
    result = {
        "output": str(output),
        "backend": backend.name,
        "precision": manifest.get("precision"),
        "scheme": manifest.get("scheme"),
        "reference": str(reference),
        "size_bytes": model_bytes(output),
        "fidelity": fidelity,
        "speed": {
            "load_seconds": load_s,
            "prompt_tokens_per_s": n_tok / t_prompt if t_prompt > 0 else None,
            "gen_tokens_per_s": n_gen / t_gen if t_gen > 0 and n_gen else None,
            "generated_tokens": n_gen,
        },
        "memory": {"peak_rss_bytes": peak_rss},
        "oracle_cache": {"key": oracle.key, "hits": oracle.hits, "misses": oracle.misses},
        "warnings": warnings,
    }
    if answers:
        result["answers"] = qa.agreement(qa.QUESTIONS, oracle_says, model_says)
    return result


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 1] + "…")


@click.command("eval")
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--reference", "reference", required=True, help="The original checkpoint (directory, hub id or tiny:<variant>).")
@click.option("--text", "text_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text file for perplexity (default: the evaluation text for real: models, else a bundled passage).")
@click.option("--max-text-tokens", type=int,
              help="Tokens of the text to score (default: 2048 for real: models, else 256).")
@click.option("--window", type=int, help="Tokens per perplexity window (default: 512 for real: models, else one window).")
@click.option("--gen-tokens", type=int, default=32, show_default=True, help="Tokens to generate for the speed test.")
@click.option("--context-length", type=int, help="Context to load the exported model with.")
@click.option("--threads", type=int, help="Runtime threads.")
@click.option("--answers/--no-answers", default=None,
              help="Answer five short chat questions greedily, in the runtime and in the oracle, and compare "
                   "(default: on for real: models).")
@json_option
def command(output, reference, text_file, max_text_tokens, window, gen_tokens, context_length, threads, answers,
            as_json) -> None:
    """Compare OUT with the fp32 oracle of REFERENCE: KL, top-1, cosine, perplexity, size, speed, RSS."""
    from ..texts import text_from_file

    text = text_from_file(text_file) if text_file else None
    r = evaluate(output, reference, text=text, max_text_tokens=max_text_tokens, window=window, gen_tokens=gen_tokens,
                 context_length=context_length, threads=threads, answers=answers)
    if as_json:
        emit_json(r)
        return
    f, s = r["fidelity"], r["speed"]
    for w in r["warnings"]:
        click.echo(f"Warning: {w}", err=True)
    click.echo(f"{r['backend']} {r['precision']} ({r['scheme']}), {fmt_bytes(r['size_bytes'])}")
    click.echo(f"KL(oracle||model) mean {f['kl_mean']:.3g}, max {f['kl_max']:.3g}; top-1 agreement "
               f"{100 * f['top1_agreement']:.1f}%; cosine {f['cosine_mean']:.5f}; max |dlogit| {f['max_abs_diff']:.3g} "
               f"({f['positions']} positions, {f['prompts']} prompts)")
    if "perplexity" in f:
        t = f["text"]
        where = t["files"][0]["path"] if len(t["files"]) == 1 else f"{len(t['files'])} files" if t["files"] else "the text"
        click.echo(f"perplexity {f['perplexity']:.3f} (oracle {f['reference_perplexity']:.3f}) on {f['text_tokens']} tokens "
                   f"of {where} (sha256 {t['sha256'][:12]}), {t['windows']} window(s) of {t['window']}")
        click.echo(f"on the text: KL mean {f['text_kl_mean']:.3g}, max {f['text_kl_max']:.3g}; top-1 agreement "
                   f"{100 * f['text_top1_agreement']:.1f}% ({f['text_positions']} positions)")
    if "answers" in r:
        a = r["answers"]
        click.echo(f"answers: {a['agree']} of {a['of']} the same as the oracle's (greedy, {a['max_new_tokens']} new tokens)")
        for item in a["items"]:
            mark = "=" if item["same"] else "≠"
            click.echo(f"  {mark} {item['question']}  model: {_short(item['model'])}" +
                       ("" if item["same"] else f"  oracle: {_short(item['oracle'])}"))
    pt = f"{s['prompt_tokens_per_s']:.1f}" if s["prompt_tokens_per_s"] else "?"
    gt = f"{s['gen_tokens_per_s']:.1f}" if s["gen_tokens_per_s"] else "?"
    click.echo(f"load {s['load_seconds']:.2f} s; prompt {pt} tok/s; generation {gt} tok/s; "
               f"peak RSS {fmt_bytes(r['memory']['peak_rss_bytes'])}")
