"""Benchmark: phi-quant's OpenVINO int4 export vs ``optimum-cli export openvino --weight-format int4``.

Not a test. Converts the same checkpoint both ways, each in its own process, and reports wall
time, peak RSS (the converter process and its children) and output size; then loads both outputs
in ``openvino_genai.LLMPipeline`` on CPU and measures greedy decode throughput.

optimum-intel pins transformers versions that may clash with phi-quant's environment, so it runs
from a separate Python (``--optimum-python``, a venv where ``optimum-intel[openvino]`` is
installed); phi-quant runs from this interpreter. Usage::

    python bench/openvino_vs_optimum.py --checkpoint /path/to/hf_dir \\
        --optimum-python /tmp/ovbench-venv/bin/python --json bench-openvino.json

Without ``--checkpoint`` a >= 1 GB Phi-3-shaped checkpoint is generated
(``phi_quant.testing.factory.make_large_checkpoint``) in the work directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_MEASURE = r"""
import json, resource, subprocess, sys, time
t = time.time()
rc = subprocess.run(sys.argv[1:]).returncode
print("BENCH " + json.dumps({"rc": rc, "seconds": time.time() - t,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

_OURS = r"""
import sys
from pathlib import Path
from phi_quant.model.source import open_model
from phi_quant.types import ExportOptions, NullProgress
from phi_quant_openvino.export import export_model
out = Path(sys.argv[2]); out.mkdir(parents=True)
with open_model(sys.argv[1]) as src:
    r = export_model(src, out, ExportOptions(precision="int4"), NullProgress())
print("scheme", r.scheme)
"""

_THROUGHPUT = r"""
import json, sys
import openvino_genai as og
pipe = og.LLMPipeline(sys.argv[1], "CPU")
cfg = pipe.get_generation_config()
cfg.max_new_tokens = int(sys.argv[2]); cfg.do_sample = False; cfg.ignore_eos = True; cfg.apply_chat_template = False
pipe.generate(["The history of the sea"], cfg)  # warm-up
res = pipe.generate(["The history of the sea"], cfg)  # a list gives DecodedResults with perf_metrics
pm = res.perf_metrics
print("BENCH " + json.dumps({"tokens_per_s": pm.get_throughput().mean, "ttft_ms": pm.get_ttft().mean,
                             "tpot_ms": pm.get_tpot().mean}))
"""


def _run(argv: list[str]) -> dict:
    proc = subprocess.run(argv, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"{argv[:4]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[6:])


def _size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="Hugging Face Phi3 checkpoint directory (default: generate one)")
    ap.add_argument("--optimum-python", default="/tmp/ovbench-venv/bin/python",
                    help="python of a venv with optimum-intel[openvino] installed")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ov-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint
    if ckpt is None:
        from phi_quant.testing.factory import make_large_checkpoint

        ckpt = work / "checkpoint"
        if not (ckpt / "config.json").exists():
            make_large_checkpoint(ckpt)
    ckpt_mib = _size_mib(ckpt)

    results: dict[str, dict] = {}
    ours_out = work / "phi-quant-int4"
    shutil.rmtree(ours_out, ignore_errors=True)
    results["phi-quant"] = _run([sys.executable, "-c", _MEASURE, sys.executable, "-c", _OURS, str(ckpt), str(ours_out)])
    results["phi-quant"]["output_mib"] = _size_mib(ours_out)

    opt_out = work / "optimum-int4"
    shutil.rmtree(opt_out, ignore_errors=True)
    cli = str(Path(args.optimum_python).parent / "optimum-cli")
    results["optimum-cli"] = _run([sys.executable, "-c", _MEASURE, cli, "export", "openvino", "--model", str(ckpt),
                                   "--task", "text-generation-with-past", "--weight-format", "int4", str(opt_out)])
    if results["optimum-cli"]["rc"] == 0:
        results["optimum-cli"]["output_mib"] = _size_mib(opt_out)

    print(json.dumps(results), flush=True)  # conversion numbers survive a failure below
    for name, out in (("phi-quant", ours_out), ("optimum-cli", opt_out)):
        if results[name]["rc"] == 0:
            results[name].update(_run([sys.executable, "-c", _THROUGHPUT, str(out), str(args.new_tokens)]))

    report = {"checkpoint": str(ckpt), "checkpoint_mib": ckpt_mib, "results": results}
    print(json.dumps(report, indent=2))
    print(f"\n| tool | convert s | peak RSS MiB | output MiB | LLMPipeline tok/s |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r.get('output_mib', float('nan')):.0f} "
              f"| {r.get('tokens_per_s', float('nan')):.1f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
