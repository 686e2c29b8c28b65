"""Benchmark: INT4 recipes on a real model, every backend in its own vendor runtime, against the fp32 oracle.

Not a test. For each cell ``BACKEND:RECIPE[:QUANTIZE-ARGS]`` it runs ``phi-quant quantize`` (a
subprocess, timed; calibrated recipes share one ``--calibration-cache``), opens the output with the
backend's own runtime (``load_model``) and measures, on exactly the same token ids as the oracle:

- KL(oracle || model) mean and top-1 agreement at every position of the first ``--tokens`` tokens of
  the evaluation text (``phi_quant.texts.evaluation_text()``, never the calibration text), in
  windows of 512 each run from position 0, and the perplexity there (Δppl relative to the oracle's);
- chat agreement: for a few short questions rendered with the model's chat template, the greedy
  answer (``--chat-tokens`` tokens, stopping at an end token) computed from the runtime's logits,
  compared with the oracle's: the share of answers identical to the oracle's, and the mean share of
  the oracle's answer tokens produced before the first divergence.

A cell ``vendor:DIR:BACKEND`` evaluates a directory a vendor tool wrote (``bench/vendor_*.py``) with
that backend's runtime. The oracle's logits and answers are cached in the work directory.

    python bench/calibration_fidelity.py --model real:smollm2 --work /tmp/bench \\
        llamacpp:rtn llamacpp:awq+gptq "llamacpp:awq:--policy q4_k_m" --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

QUESTIONS = (
    "What is the capital of France?",
    "Name the three primary colors.",
    "What is two plus two?",
    "Who wrote Romeo and Juliet?",
    "At what temperature does water boil, in degrees Celsius?",
    "Give one word that means happy.",
    "What is the largest planet in the solar system?",
    "Translate 'thank you' into Spanish.",
)


def _chat_ids(source, question: str) -> list[int]:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    cfg = source.tokenizer_config
    tok = source.hf_tokenizer()
    text = ImmutableSandboxedEnvironment().from_string(source.chat_template).render(
        messages=[{"role": "user", "content": question}], add_generation_prompt=True,
        bos_token=_token_text(cfg.get("bos_token")), eos_token=_token_text(cfg.get("eos_token")))
    return tok.encode(text, add_special_tokens=False).ids


def _token_text(t) -> str:
    return t.get("content", "") if isinstance(t, dict) else (t or "")


def greedy(logits_of, ids: list[int], n: int, stop: set[int]) -> list[int]:
    out: list[int] = []
    for _ in range(n):
        nxt = int(np.argmax(np.asarray(logits_of(ids + out))[-1]))
        out.append(nxt)
        if nxt in stop:
            break
    return out


def _stop_ids(source) -> set[int]:
    gen = (source.generation_config or {}).get("eos_token_id")
    ids = gen if isinstance(gen, list) else ([gen] if gen is not None else list(source.config.eos_token_ids))
    return {int(i) for i in ids}


def oracle_reference(model: str, work: Path, tokens: int, chat_tokens: int) -> dict:
    """Oracle logits on the evaluation windows and its greedy chat answers (cached in ``work``)."""
    from phi_quant.convert import open_source
    from phi_quant.fidelity import text_windows
    from phi_quant.reference import ReferenceModel
    from phi_quant.texts import evaluation_text

    text = evaluation_text()
    key = hashlib.sha256(f"{model}|{text.sha256}|{tokens}|{chat_tokens}|{QUESTIONS}".encode()).hexdigest()[:16]
    cache = work / f"oracle-{key}.npz"
    with open_source(model) as src:
        ids = src.hf_tokenizer().encode(text.text, add_special_tokens=False).ids[:tokens]
        windows = text_windows(ids, 512)
        chats = [_chat_ids(src, q) for q in QUESTIONS]
        stop = _stop_ids(src)
        if cache.exists():
            z = np.load(cache, allow_pickle=False)
            logits = [z[f"w{i}"] for i in range(len(windows))]
            answers = [list(z[f"a{i}"]) for i in range(len(chats))]
        else:
            ref = ReferenceModel.from_source(src)
            logits = [ref.logits(w) for w in windows]
            answers = [greedy(ref.logits, c, chat_tokens, stop) for c in chats]
            np.savez(cache, **{f"w{i}": x for i, x in enumerate(logits)}, **{f"a{i}": np.asarray(a) for i, a in enumerate(answers)})
    return {"windows": windows, "logits": logits, "chats": chats, "answers": answers, "stop": stop,
            "text": {**text.record(), "tokens": len(ids)}}


def measure(loaded, ref: dict, chat_tokens: int) -> dict:
    from phi_quant.fidelity import compare_logits, token_nll

    cand = [np.asarray(loaded.logits(w), np.float32) for w in ref["windows"]]
    rep = compare_logits(np.concatenate(ref["logits"]), np.concatenate(cand))
    nll = np.concatenate([token_nll(c, w) for c, w in zip(cand, ref["windows"])])
    ref_nll = np.concatenate([token_nll(r, w) for r, w in zip(ref["logits"], ref["windows"])])
    exact, prefix = 0, []
    for ids, want in zip(ref["chats"], ref["answers"]):
        got = greedy(loaded.logits, ids, chat_tokens, ref["stop"])
        exact += int(got == want)
        same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        prefix.append(same / max(len(want), 1))
    ppl, ref_ppl = float(np.exp(nll.mean())), float(np.exp(ref_nll.mean()))
    return {"kl_mean": float(rep.kl_mean), "top1": float(rep.top1_agreement), "perplexity": ppl,
            "delta_ppl_pct": 100 * (ppl / ref_ppl - 1), "chat_exact": exact / len(ref["chats"]),
            "chat_prefix": float(np.mean(prefix)), "positions": int(sum(len(w) for w in ref["windows"]))}


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.name not in ("README.md", "phi-quant.json", "imatrix.gguf"))


def run_cell(spec: str, model: str, work: Path, ref: dict, args) -> dict:
    from phi_quant.plugins import get_manager

    parts = spec.split(":", 2)
    if parts[0] == "vendor":
        out, backend, recipe, seconds, extra = Path(parts[1]), parts[2], "vendor", None, []
    else:
        backend, recipe = parts[0], parts[1]
        extra = shlex.split(parts[2]) if len(parts) > 2 else []
        tag = hashlib.sha256(spec.encode()).hexdigest()[:8]
        out = work / f"{backend}-{recipe.replace('+', '_').replace(':', '_')}-{tag}"
        cmd = [sys.executable, "-m", "phi_quant.cli", "quantize", model, "-b", backend, "-p", "int4", "-o", str(out),
               "--force", "--json", "--recipe", recipe, *extra]
        from phi_quant.quant.recipes import get_recipe
        from phi_quant.quant.recipes.calibrated import is_calibrated

        if is_calibrated(get_recipe(recipe)):
            cmd += ["--calibration-cache", str(args.calibration_cache)]
            if args.calibration_tokens:
                cmd += ["--calibration-tokens", str(args.calibration_tokens)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"cell": spec, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    be = get_manager().get(backend)
    loaded = be.load_model(out, {"context_length": 1024})
    try:
        m = measure(loaded, ref, args.chat_tokens)
    finally:
        loaded.close()
    manifest = json.loads((out / "phi-quant.json").read_text()) if (out / "phi-quant.json").exists() else {}
    timings = manifest.get("timings") or {}
    return {"cell": spec, "backend": backend, "recipe": recipe, "args": " ".join(extra), "size_mib": _bytes(out) / 2**20,
            "bits_per_weight": (manifest.get("quantization") or {}).get("bits_per_weight"),
            "convert_seconds": seconds, "calibrate_seconds": timings.get("calibrate_s"), **m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cells", nargs="+")
    ap.add_argument("--model", default="real:smollm2")
    ap.add_argument("--work", type=Path, default=Path("/tmp/phi-quant-calibration-bench"))
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--chat-tokens", type=int, default=24)
    ap.add_argument("--calibration-tokens", type=int)
    ap.add_argument("--calibration-cache", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.calibration_cache = args.calibration_cache or args.work / "calibration.safetensors"
    ref = oracle_reference(args.model, args.work, args.tokens, args.chat_tokens)
    rows = []
    for spec in args.cells:
        row = run_cell(spec, args.model, args.work, ref, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.exists() else {"rows": []}
        keep = [r for r in old["rows"] if r["cell"] not in {x["cell"] for x in rows}]
        args.json.write_text(json.dumps({"text": ref["text"], "rows": keep + rows}, indent=1))
    print("| cell | size MiB | bpw | KL | top-1 | Δppl % | chat exact | chat prefix | convert s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['cell']} | failed: {r['error']} |")
            continue
        print(f"| {r['cell']} | {r['size_mib']:.1f} | {r['bits_per_weight']} | {r['kl_mean']:.4f} | {r['top1']:.3f} | "
              f"{r['delta_ppl_pct']:+.1f} | {r['chat_exact']:.2f} | {r['chat_prefix']:.2f} | "
              f"{r['convert_seconds'] or 0:.0f} |")


if __name__ == "__main__":
    main()
