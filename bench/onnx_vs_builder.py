"""Our ONNX export vs onnxruntime-genai's model builder, on the same generated checkpoint.

    python bench/onnx_vs_builder.py                       # generates a >= 1 GB checkpoint first
    python bench/onnx_vs_builder.py --checkpoint DIR      # or reuse one
    python bench/onnx_vs_builder.py --keep /tmp/bench     # keep both outputs

Measures, for int4 on the cpu target (both with block size 32, symmetric, accuracy_level 4, the
builder's defaults): conversion wall time and peak RSS of the whole converting process (a fresh
subprocess each), output size, and decode speed of both outputs in onnxruntime-genai (same
prompt, greedy, best of several runs). Not a test: numbers go to docs/performance.md.
The builder needs torch, transformers and onnx-ir (``pip install onnx-ir``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OURS = """
import sys
from pathlib import Path
from phi_quant.model.source import open_model
from phi_quant.types import ExportOptions
from phi_quant_onnx.export import export_model
out = Path(sys.argv[2]); out.mkdir(parents=True)
with open_model(sys.argv[1]) as src:
    export_model(src, out, ExportOptions(precision="int4"))
"""

TPS = """
import json, sys, time
import numpy as np
import onnxruntime_genai as og
config = og.Config(sys.argv[1])
threads = int(sys.argv[5])
if threads:
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
model = og.Model(config)
prompt_len, new = int(sys.argv[2]), int(sys.argv[3])
vocab = json.load(open(sys.argv[1] + "/genai_config.json"))["model"]["vocab_size"]
ids = np.random.RandomState(0).randint(100, min(vocab, 30000), prompt_len).astype(np.int32)
def once():
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=prompt_len + new, min_length=prompt_len + new, do_sample=False)
    gen = og.Generator(model, params)
    t0 = time.perf_counter(); gen.append_tokens(ids); t1 = time.perf_counter(); c1 = time.process_time(); n = 0
    while not gen.is_done():
        gen.generate_next_token(); n += 1
    t2 = time.perf_counter(); c2 = time.process_time()
    return prompt_len / (t1 - t0), n / (t2 - t1), n / (c2 - c1)
once()
runs = [once() for _ in range(int(sys.argv[4]))]
print(json.dumps({"prefill_tps": max(r[0] for r in runs), "decode_tps": max(r[1] for r in runs),
                  "decode_tokens_per_cpu_s": max(r[2] for r in runs)}))
"""


def run_measured(argv: list[str]) -> tuple[float, float]:
    """Run a command in a fresh process; return (wall seconds, peak RSS MiB of that process tree's largest)."""
    t0 = time.perf_counter()
    wrapper = [
        sys.executable, "-c",
        "import resource, subprocess, sys\n"
        "rc = subprocess.call(sys.argv[1:])\n"
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(rc)\n",
        *argv,
    ]
    proc = subprocess.run(wrapper, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"command failed: {' '.join(argv[:6])} ...")
    peak_kb = int(proc.stderr.rsplit("PEAK_KB", 1)[1].split()[0])
    return wall, peak_kb / 1024


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def tokens_per_second(folder: Path, prompt_len: int, new: int, runs: int, threads: int = 0) -> dict:
    out = subprocess.run([sys.executable, "-c", TPS, str(folder), str(prompt_len), str(new), str(runs), str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="existing HF checkpoint directory (default: generate one)")
    ap.add_argument("--speed-only", action="store_true", help="reuse the outputs kept in --keep; measure speed only")
    ap.add_argument("--keep", type=Path, help="directory to keep outputs in (default: a temp dir, removed)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens for the speed runs")
    ap.add_argument("--new", type=int, default=64, help="generated tokens for the speed runs")
    ap.add_argument("--runs", type=int, default=3, help="generations per measurement (best is kept)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating ours/builder measurement rounds")
    ap.add_argument("--threads", type=int, default=0,
                    help="onnxruntime intra-op threads (0: its default). With 1, tokens per CPU-second is a "
                         "load-independent measure of the work per token")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ckpt = args.checkpoint
        if args.speed_only and args.keep is None:
            raise SystemExit("--speed-only needs --keep DIR from an earlier run")
        if ckpt is None:
            from phi_quant.testing.factory import make_large_checkpoint

            ckpt = work / "large-checkpoint"
            if not ckpt.exists():
                make_large_checkpoint(ckpt)
        ckpt_mib = dir_mib(Path(ckpt))
        ours_dir, builder_dir = work / "ours-int4", work / "builder-int4"
        ours_s = ours_rss = b_s = b_rss = float("nan")
        if not args.speed_only:
            for d in (ours_dir, builder_dir):
                shutil.rmtree(d, ignore_errors=True)
            ours_s, ours_rss = run_measured([sys.executable, "-c", OURS, str(ckpt), str(ours_dir)])
            b_s, b_rss = run_measured([
                sys.executable, "-m", "onnxruntime_genai.models.builder",
                "-i", str(ckpt), "-o", str(builder_dir), "-p", "int4", "-e", "cpu", "-c", str(work / "builder-cache"),
            ])
        # Alternate the two models for several rounds: on a shared machine the load drifts, so
        # the per-round ratio is more telling than either absolute number.
        ours_runs, b_runs = [], []
        for _ in range(args.rounds):
            ours_runs.append(tokens_per_second(ours_dir, args.prompt, args.new, args.runs, args.threads))
            b_runs.append(tokens_per_second(builder_dir, args.prompt, args.new, args.runs, args.threads))
        ours_tps = {k: max(r[k] for r in ours_runs) for k in ours_runs[0]}
        b_tps = {k: max(r[k] for r in b_runs) for k in b_runs[0]}
        ratios = sorted(o["decode_tps"] / b["decode_tps"] for o, b in zip(ours_runs, b_runs))
        cpu_ratio = ours_tps["decode_tokens_per_cpu_s"] / b_tps["decode_tokens_per_cpu_s"]

        print(f"checkpoint: {ckpt} ({ckpt_mib:.0f} MiB on disk), {os.cpu_count()} CPU threads")
        print(f"speed: prompt {args.prompt} tokens, {args.new} new tokens, greedy, best of {args.rounds} alternating "
              f"rounds x {args.runs} runs; load average {os.getloadavg()[0]:.1f}\n")
        print("| | conversion s | peak RSS MiB | output MiB | prefill tok/s | decode tok/s | decode tok per CPU-s |")
        print("|---|---|---|---|---|---|---|")
        for name, s, rss, d, tps in (
            ("phi-quant onnx (int4)", ours_s, ours_rss, ours_dir, ours_tps),
            ("onnxruntime-genai builder (int4, cpu)", b_s, b_rss, builder_dir, b_tps),
        ):
            print(f"| {name} | {s:.1f} | {rss:.0f} | {dir_mib(d):.0f} | {tps['prefill_tps']:.1f} | {tps['decode_tps']:.2f} "
                  f"| {tps['decode_tokens_per_cpu_s']:.2f} |")
        print(f"\ndecode speed ratio ours/builder: best {ours_tps['decode_tps'] / b_tps['decode_tps']:.3f}, "
              f"per round {', '.join(f'{r:.3f}' for r in ratios)}; per CPU-second {cpu_ratio:.3f}; "
              f"peak RSS ratio: {ours_rss / b_rss:.3f}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
