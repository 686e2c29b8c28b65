"""Measure recipes and size budgets on a real model, every backend in its own runtime.

    python bench/recipes_fidelity.py real:smollm2 --cell "llamacpp|rtn" --cell "llamacpp|clip" ...
    python bench/recipes_fidelity.py real:smollm2 --grid          # the docs/fidelity.md table
    python bench/recipes_fidelity.py real:smollm2 --budgets       # --bits-per-weight sweep
    python bench/recipes_fidelity.py large --cell "llamacpp|clip"  # conversion time of the 1 GB checkpoint

A cell is ``backend|recipe|key=value,...`` (keys: precision, scheme, group_size, symmetric,
bits_per_weight, policy, or a backend --option). Per cell: conversion time (convert(), this
process), output size (model files) and tensor bits per weight (manifest), then the output runs
in the vendor's runtime (the backend's load_model) on the evaluation text, cut into windows of
``--window`` tokens: KL(fp32 oracle || backend) mean and top-1 over every position, perplexity and
its change against the oracle's, and greedy chat agreement: for each chat prompt, the share of the
oracle's greedy answer tokens the backend reproduces before its first different token.

The oracle's logits and answers are computed once per (model, text, tokens) and cached under
``$PHI_QUANT_CACHE`` (default ~/.cache/phi-quant)/bench.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHAT_PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "What is two plus two?",
    "Write one sentence about the sea.",
)
ANSWER_TOKENS = 32


def _eval_text() -> tuple[str, str]:
    try:
        from phi_quant.texts import evaluation_text  # the real-model texts, when present

        t = evaluation_text()
        return t.text, t.sha256[:12]
    except ImportError:
        p = Path("/usr/share/common-licenses/GPL-3")
        text = p.read_text(encoding="utf-8")
        return text, hashlib.sha256(text.encode()).hexdigest()[:12]


def _cache_dir() -> Path:
    root = Path(os.environ.get("PHI_QUANT_CACHE") or Path.home() / ".cache" / "phi-quant") / "bench"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _render_chat(source, question: str) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    tc = source.tokenizer_config or {}
    tokens = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in tc.items() if k in ("bos_token", "eos_token")}
    return ImmutableSandboxedEnvironment().from_string(source.chat_template).render(
        messages=[{"role": "user", "content": question}], add_generation_prompt=True, **tokens)


def oracle(model: str, tokens: int, window: int) -> dict:
    """fp32 oracle logits per window and greedy chat answers (cached)."""
    from phi_quant.convert import open_source
    from phi_quant.reference import ReferenceModel

    text, text_sha = _eval_text()
    with open_source(model) as src:
        key = hashlib.sha256(f"{src.path}|{text_sha}|{tokens}|{window}|{ANSWER_TOKENS}".encode()).hexdigest()[:16]
        path = _cache_dir() / f"oracle-{key}.npz"
        tok = src.hf_tokenizer()
        ids = tok.encode(text, add_special_tokens=False).ids[:tokens]
        windows = [ids[i : i + window] for i in range(0, len(ids), window) if len(ids[i : i + window]) >= 2]
        prompts = [_render_chat(src, q) for q in CHAT_PROMPTS] if src.chat_template else []
        if path.exists():
            data = np.load(path, allow_pickle=False)
            logits = [data[f"w{i}"] for i in range(len(windows))]
            answers = json.loads(str(data["answers"]))
        else:
            ref = ReferenceModel.from_source(src)
            logits = [np.asarray(ref.logits(w), dtype=np.float32) for w in windows]
            eos = set(src.config.eos_token_ids)
            answers = []
            for p in prompts:
                pids = tok.encode(p, add_special_tokens=False).ids
                out = ref.generate(pids, ANSWER_TOKENS, eos_ids=eos)
                answers.append(tok.decode([t for t in out if t not in eos], skip_special_tokens=False))
            np.savez(path, answers=json.dumps(answers), **{f"w{i}": x for i, x in enumerate(logits)})
        return {"windows": windows, "logits": logits, "prompts": prompts, "answers": answers, "tokenizer": tok,
                "text_sha": text_sha}


def _options(spec: str):
    from phi_quant.cli._common import parse_option_value
    from phi_quant.types import ExportOptions

    parts = spec.split("|")
    backend, recipe = parts[0], (parts[1] if len(parts) > 1 and parts[1] else "rtn")
    kw: dict = {"precision": "int4", "recipe": None if recipe == "rtn" else recipe}
    extra: dict = {}
    fields = {"precision", "scheme", "group_size", "symmetric", "bits_per_weight", "policy", "calibration",
              "calibration_tokens", "calibration_cache"}
    for item in (parts[2].split(",") if len(parts) > 2 and parts[2] else []):
        k, _, v = item.partition("=")
        (kw if k in fields else extra)[k] = parse_option_value(v)
    return backend, ExportOptions(extra=extra, **kw)


def _agreement(tok, got: str, want: str) -> float:
    a, b = tok.encode(got, add_special_tokens=False).ids, tok.encode(want, add_special_tokens=False).ids
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n / max(len(b), 1)


def measure(model: str, spec: str, ref: dict, threads: int | None = None) -> dict:
    from phi_quant.convert import convert
    from phi_quant.manifest import model_bytes

    backend, options = _options(spec)
    work = Path(tempfile.mkdtemp(prefix="recipes-bench-"))
    out = work / "out"
    row: dict = {"cell": spec, "backend": backend}
    try:
        t0 = time.perf_counter()
        res = convert(model, backend, options, out)
        row["convert_s"] = round(time.perf_counter() - t0, 1)
        row["size_mib"] = round(model_bytes(out) / 2**20, 2)
        quant = res.manifest.get("quantization") or {}
        row["bits_per_weight"] = quant.get("bits_per_weight")
        row["schemes"] = quant.get("schemes")
        if res.manifest.get("calibration"):
            row["calibrate_s"] = round(res.manifest["timings"].get("calibrate_s", 0.0), 1)
        row.update(evaluate(backend, out, ref, threads))
    except Exception as exc:  # noqa: BLE001 - a failing cell is a row, not the end of the run
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return row


def evaluate(backend: str, out: Path, ref: dict, threads: int | None = None) -> dict:
    """KL, top-1, perplexity and chat agreement of the output ``out`` in ``backend``'s runtime."""
    from phi_quant.fidelity import compare_logits, perplexity
    from phi_quant.plugins import get_manager

    row: dict = {}
    m = get_manager().get(backend).load_model(out, {"threads": threads} if threads else {})
    try:
        kl, top1, n, ppl_got, ppl_ref = 0.0, 0.0, 0, [], []
        for w, want in zip(ref["windows"], ref["logits"]):
            got = np.asarray(m.logits(w), dtype=np.float32)
            r = compare_logits(want, got)
            kl += float(r.kl_mean) * r.positions
            top1 += float(r.top1_agreement) * r.positions
            n += r.positions
            ppl_got.append(np.log(perplexity(got, w)) * (len(w) - 1))
            ppl_ref.append(np.log(perplexity(want, w)) * (len(w) - 1))
        tokens = sum(len(w) - 1 for w in ref["windows"])
        row["kl"] = kl / n
        row["top1"] = top1 / n
        row["ppl"] = float(np.exp(sum(ppl_got) / tokens))
        row["ppl_ref"] = float(np.exp(sum(ppl_ref) / tokens))
        row["dppl_pct"] = 100 * (row["ppl"] / row["ppl_ref"] - 1)
        agree = [_agreement(ref["tokenizer"], m.generate(p, max_new_tokens=ANSWER_TOKENS), a)
                 for p, a in zip(ref["prompts"], ref["answers"])]
        row["chat"] = float(np.mean(agree)) if agree else None
    finally:
        m.close()
    return row


def _print(row: dict) -> None:
    if "error" in row:
        print(f"| {row['cell']} | failed: {row['error']} |")
    else:
        chat = f"{100 * row['chat']:.0f}%" if row.get("chat") is not None else "–"
        print(f"| {row['cell']} | {row['size_mib']:.1f} | {row['bits_per_weight']} | {row['kl']:.4f} | "
              f"{row['dppl_pct']:+.1f}% | {100 * row['top1']:.1f}% | {chat} | {row['convert_s']:.1f} |")
    sys.stdout.flush()


#: Every backend's default int4 scheme with each recipe that can store it, another int4 scheme of
#: about the same size where the format has one, and the best recipe inside a size budget at the
#: default's bits per weight (mixing schemes within the same size; round to nearest there is in
#: :data:`BUDGETS`).
GRID = [
    "llamacpp|rtn", "llamacpp|clip", "llamacpp|clip|bits_per_weight=4.5",
    "onnx|rtn", "onnx|clip", "onnx|hqq|symmetric=false,group_size=64", "onnx|clip|bits_per_weight=5",
    "openvino|rtn", "openvino|clip", "openvino|hqq", "openvino|clip|bits_per_weight=5",
    "mlx|rtn", "mlx|clip", "mlx|hqq", "mlx|clip|bits_per_weight=4.5",
]

#: ``--bits-per-weight`` sweep (round to nearest) per backend.
BUDGETS = [f"{b}|rtn|bits_per_weight={x}" for b in ("llamacpp", "onnx", "openvino", "mlx") for x in (4.25, 4.5, 5, 6)]


def large(cells: list[str]) -> None:
    """Conversion time and peak RSS of the kit's generated 1.2 GB checkpoint, one fresh process per cell."""
    import textwrap

    from phi_quant.testing.kit_streaming import large_checkpoint
    from phi_quant.testing.rss import run_with_peak_rss

    ckpt = large_checkpoint()
    size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    print(f"checkpoint {size / 1e9:.2f} GB; load average {os.getloadavg()[0]:.1f}")
    print("| cell | seconds | MB/s of source | peak RSS MiB | load average |")
    print("|---|---|---|---|---|")
    for spec in cells:
        with tempfile.TemporaryDirectory(prefix="recipes-large-") as d:
            code = textwrap.dedent(f"""
                import sys
                sys.path.insert(0, {str(Path(__file__).parent)!r})
                from pathlib import Path
                from recipes_fidelity import _options
                from phi_quant.convert import convert
                backend, options = _options({spec!r})
                convert({str(ckpt)!r}, backend, options, Path({d!r}) / "out")
            """)
            t0 = time.perf_counter()
            result = run_with_peak_rss(code, check=True)
            dt = time.perf_counter() - t0
            print(f"| {spec} | {dt:.1f} | {size / 1e6 / dt:.0f} | {result.peak_rss / 2**20:.0f} | "
                  f"{os.getloadavg()[0]:.1f} |")
            sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--cell", action="append", default=[], help="backend|recipe|key=value,... (repeatable)")
    ap.add_argument("--grid", action="store_true", help="every backend x recipe at its default int4 scheme")
    ap.add_argument("--budgets", action="store_true", help="--bits-per-weight 4.25, 4.5, 5, 6 in every backend")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", type=Path, help="append each row as a JSON line to this file")
    args = ap.parse_args()
    cells = list(args.cell) + (GRID if args.grid else []) + (BUDGETS if args.budgets else [])
    if args.model == "large":
        return large(cells)
    t0 = time.perf_counter()
    ref = oracle(args.model, args.tokens, args.window)
    print(f"oracle: {sum(len(w) for w in ref['windows'])} tokens in {len(ref['windows'])} windows, "
          f"{len(ref['prompts'])} chat prompts, text {ref['text_sha']} ({time.perf_counter() - t0:.0f} s); "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| cell | size MiB | bits/weight | KL | Δppl | top-1 | chat | convert s |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in cells:
        row = measure(args.model, spec, ref, args.threads)
        row["load_average"] = round(os.getloadavg()[0], 1)
        _print(row)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
