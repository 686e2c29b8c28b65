"""Benchmark: peak memory and time of calibration on the >= 1 GB generated checkpoint.

Not a test. Generates ``phi_quant.testing.factory.make_large_checkpoint`` (hidden 2048, FFN 8192,
7 layers, bf16, 1.1 GB) in the work directory, then in fresh interpreters (peak RSS = the child's
own ``VmHWM``, ``phi_quant.testing.rss``):

1. ``statistics`` — the streaming calibration pass alone (``phi_quant.calib.calibration_statistics``):
   one layer's float32 weights, the residual stream and the layer's XᵀX accumulators at a time;
2. ``quantize --recipe R`` — the whole conversion (statistics reused from the cache of step 1,
   AWQ search and/or GPTQ, export) with the reference backend.

    python bench/calibration_memory.py --work /tmp/calib-mem --tokens 512 --recipe awq+gptq
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

_STATS = """
import time
from pathlib import Path
from phi_quant.calib import calibration_statistics, request_from_options
from phi_quant.model.source import open_model
from phi_quant.types import ExportOptions
t = time.perf_counter()
with open_model({ckpt!r}) as src:
    req = request_from_options(ExportOptions(precision="int4", recipe="gptq", calibration_tokens={tokens},
                                             calibration_cache={cache!r}))
    stats = calibration_statistics(src, req)
print("SECONDS", time.perf_counter() - t, "TOKENS", stats.meta["tokens"], "BYTES", Path({cache!r}).stat().st_size)
"""


def main() -> None:
    from phi_quant.testing.factory import make_large_checkpoint
    from phi_quant.testing.rss import run_with_peak_rss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/phi-quant-calibration-memory"))
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--recipe", default="awq+gptq")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint, statistics and output")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = args.work / "large"
    if not (ckpt / "config.json").exists():
        make_large_checkpoint(ckpt)
    size = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    cache = args.work / "stats.safetensors"
    cache.unlink(missing_ok=True)
    rows = {"checkpoint_bytes": size, "tokens": args.tokens, "recipe": args.recipe,
            "load_average": os.getloadavg()}
    r = run_with_peak_rss(textwrap.dedent(_STATS.format(ckpt=str(ckpt), tokens=args.tokens, cache=str(cache))), timeout=7200)
    assert r.returncode == 0, r.output
    words = r.output.split()
    rows["statistics"] = {"peak_rss_mib": r.peak_rss / 2**20, "seconds": float(words[words.index("SECONDS") + 1]),
                          "stats_file_bytes": int(words[words.index("BYTES") + 1])}
    out = args.work / "out"
    code = (f"import sys; from phi_quant.cli import cli; sys.argv = ['phi-quant', 'quantize', {str(ckpt)!r}, '-b', "
            f"'reference', '-p', 'int4', '-o', {str(out)!r}, '--force', '-q', '--recipe', {args.recipe!r}, "
            f"'--calibration-tokens', '{args.tokens}', '--calibration-cache', {str(cache)!r}]; cli()")
    t0 = time.perf_counter()
    r = run_with_peak_rss(code, timeout=7200)
    assert r.returncode == 0, r.output
    manifest = json.loads((out / "phi-quant.json").read_text())
    rows["quantize"] = {"peak_rss_mib": r.peak_rss / 2**20, "seconds": time.perf_counter() - t0,
                        "timings": manifest.get("timings"), "calibration_seconds": manifest["calibration"]["seconds"]}
    print(json.dumps(rows, indent=1))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
