"""What the hostile-input checks cost a real conversion: opening (header, index, config and
tokenizer validation), the export itself, and the sha256 record of every output file that
``phi-quant verify`` checks against, measured side by side in one run.

    python bench/output_checks.py [--backend llamacpp] [--precision int8]

Uses the generated 1.2 GB bf16 checkpoint of the conformance kit (built on first use).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    from phi_quant.convert import convert
    from phi_quant.model.source import open_model
    from phi_quant.testing.kit_streaming import large_checkpoint
    from phi_quant.types import ExportOptions
    from phi_quant.verify import find_problems, record_outputs

    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="llamacpp")
    ap.add_argument("--precision", default="int8")
    args = ap.parse_args()
    ckpt = large_checkpoint()
    t = time.perf_counter()
    with open_model(ckpt) as src:
        n = len(src.tensor_infos())
    t_open = time.perf_counter() - t
    with tempfile.TemporaryDirectory(dir=Path(ckpt).parent.parent) as tmp:
        out = Path(tmp) / "out"
        t = time.perf_counter()
        result = convert(ckpt, args.backend, ExportOptions(args.precision), out)
        t_convert = time.perf_counter() - t
        t, c = time.perf_counter(), time.process_time()
        recorded = record_outputs(out)
        t_hash, c_hash = time.perf_counter() - t, time.process_time() - c
        t = time.perf_counter()
        assert not find_problems(out, recorded, full=False)
        t_sizes = time.perf_counter() - t
    gb = sum(e["bytes"] for e in recorded.values()) / 1e9
    print(f"load average {os.getloadavg()[0]:.1f}; {args.backend} {args.precision} ({result.scheme}), {n} tensors, "
          f"output {gb:.2f} GB")
    print("| step | seconds | share of the conversion |")
    print("|---|---|---|")
    for step, sec in (("open + validate the checkpoint", t_open), ("whole conversion (convert)", t_convert),
                      ("sha256 of every output file (inside convert)", t_hash), ("size check (run)", t_sizes)):
        print(f"| {step} | {sec:.3f} | {100 * sec / t_convert:.1f}% |")
    print(f"sha256 CPU time {c_hash:.2f} s ({gb / max(c_hash, 1e-9):.2f} GB per CPU second)")


if __name__ == "__main__":
    main()
