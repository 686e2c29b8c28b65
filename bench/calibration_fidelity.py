"""Benchmark: calibrated INT4 recipes against round to nearest and against the vendors' own recipes.

Not a test. It measures exactly as ``bench/recipes_fidelity.py`` does (same oracle cache, the
evaluation text in windows of 512, KL / top-1 / Δppl against the fp32 oracle, greedy chat agreement
with the runtime's own generate), so its rows join that table in docs/fidelity.md. Two kinds of cell:

- ``BACKEND|RECIPE|key=value,...`` — ``phi-quant`` converts (``convert()``, timed); calibrated recipes
  share one ``--calibration-cache`` (``--cache``) so the model is calibrated once for all cells;
- ``vendor|DIR|BACKEND`` — a directory a vendor tool wrote (``bench/vendor_*.py``: NNCF,
  onnxruntime's quantizers, llama.cpp's imatrix + llama-quantize, mlx-lm GPTQ), run in that
  backend's runtime.

Sizes are of the model files only (not the manifest, the model card, nor ``imatrix.gguf``).

    python bench/calibration_fidelity.py real:smollm2 --json /tmp/calib.jsonl \\
        "llamacpp|rtn" "llamacpp|awq+gptq" "vendor|/tmp/bench/nncf-awq_se|openvino"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import recipes_fidelity as rf  # noqa: E402 - the shared oracle and measurement

NOT_MODEL = ("phi-quant.json", "README.md", "imatrix.gguf")


def model_mib(out: Path) -> float:
    return sum(f.stat().st_size for f in Path(out).rglob("*")
               if f.is_file() and not (f.parent == Path(out) and f.name in NOT_MODEL)) / 2**20


def ours(model: str, spec: str, ref: dict, cache: Path, tokens: int | None, calibration: str | None = None) -> dict:
    from phi_quant.convert import convert
    from phi_quant.quant.recipes import get_recipe
    from phi_quant.quant.recipes.calibrated import is_calibrated

    backend, options = rf._options(spec)
    if options.recipe and is_calibrated(get_recipe(options.recipe)):
        options = dataclasses.replace(options, calibration_cache=cache, calibration_tokens=tokens,
                                      calibration=calibration)
    work = Path(tempfile.mkdtemp(prefix="calibration-bench-"))
    row: dict = {"cell": spec, "backend": backend}
    try:
        t0 = time.perf_counter()
        res = convert(model, backend, options, work / "out")
        row["convert_s"] = round(time.perf_counter() - t0, 1)
        row["calibrate_s"] = round((res.manifest.get("timings") or {}).get("calibrate_s", 0.0), 1)
        row["size_mib"] = round(model_mib(work / "out"), 2)
        row["bits_per_weight"] = (res.manifest.get("quantization") or {}).get("bits_per_weight")
        row["calibration"] = res.manifest.get("calibration", {}).get("text")
        row.update(rf.evaluate(backend, work / "out", ref))
    except Exception as exc:  # noqa: BLE001 - a failing cell is a row, not the end of the run
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return row


def vendor(spec: str, ref: dict) -> dict:
    _, directory, backend = spec.split("|")
    out = Path(directory)
    row: dict = {"cell": spec, "backend": backend, "size_mib": round(model_mib(out), 2)}
    notes = out / "vendor.json"
    if notes.exists():
        row["vendor"] = json.loads(notes.read_text())
    try:
        row.update(rf.evaluate(backend, out, ref))
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("cells", nargs="+")
    ap.add_argument("--tokens", type=int, default=1024, help="evaluation tokens")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--calibration-tokens", type=int, help="default: phi-quant's (2048)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/phi-quant-calibration-bench/calibration.safetensors"),
                    help="the --calibration-cache every calibrated cell shares")
    ap.add_argument("--calibration", help="calibration text FILE, or 'synthetic' (no text), for every calibrated "
                    "cell (default: phi-quant's calibration text); give each its own --cache")
    ap.add_argument("--json", type=Path, help="append each row as a JSON line to this file")
    args = ap.parse_args()
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    ref = rf.oracle(args.model, args.tokens, args.window)
    print(f"oracle: {sum(len(w) for w in ref['windows'])} tokens, {len(ref['prompts'])} chat prompts, text "
          f"{ref['text_sha']}; load average {os.getloadavg()[0]:.1f}", flush=True)
    print("| cell | size MiB | bits/weight | KL | Δppl | top-1 | chat | convert s |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.cells:
        row = vendor(spec, ref) if spec.startswith("vendor|") else ours(args.model, spec, ref, args.cache,
                                                                         args.calibration_tokens, args.calibration)
        row["load_average"] = round(os.getloadavg()[0], 1)
        row.setdefault("convert_s", 0.0)
        row.setdefault("bits_per_weight", None)
        rf._print(row)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
