"""Vendor recipe: mlx-lm's own GPTQ (``mlx_lm.quant.gptq.gptq_quantize``) on phi-quant's bf16 MLX export.

Not a test. ``mlx_lm.gptq`` downloads its calibration text from the internet; this script calls the
same function with phi-quant's calibration tokens instead (``phi_quant.texts.calibration_text()``,
the first ``--tokens`` in rows of 512), at mlx-lm's ``convert -q`` settings that phi-quant's mlx int4
matches (4 bits, group 64, and 4/64 for what GPTQ does not touch: the tied embedding), and saves with
``mlx_lm.utils.save`` so ``bench/calibration_fidelity.py "vendor|DIR|mlx"`` runs it in mlx-lm as our own
outputs. (mlx-lm's AWQ has no phi3 support; DWQ is a distillation training run, not tried here.)

The model GPTQ starts from is phi-quant's fp32 MLX export by default (``--base fp32``): mlx-lm then
keeps scales and biases in float32, exactly the dtype of phi-quant's ``mlx|...|dtype=float32``
cells it is compared with, and mlx's CPU quantized matmul runs at float32 speed (with bfloat16
scales one evaluation takes ~40 minutes of CPU here). ``--base bf16`` is what ``mlx_lm.convert``
would start from on a bf16 checkpoint.

    python bench/vendor_mlx.py --work /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="real:smollm2")
    ap.add_argument("--work", type=Path, default=Path("/tmp/phi-quant-calibration-bench"))
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--base", choices=("fp32", "bf16"), default="fp32", help="precision of the MLX export GPTQ starts from")
    args = ap.parse_args()
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.quant.gptq import gptq_quantize
    from mlx_lm.utils import load, save

    from phi_quant.convert import open_source
    from phi_quant.texts import calibration_text

    base = args.work / f"mlx-{args.base}"
    if not (base / "config.json").exists():
        subprocess.run([sys.executable, "-m", "phi_quant.cli", "quantize", args.model, "-b", "mlx", "-p", args.base,
                        "-o", str(base), "--force", "-q"], check=True)
    with open_source(args.model) as src:
        ids = src.hf_tokenizer().encode(calibration_text().text, add_special_tokens=False).ids[: args.tokens]
    rows = len(ids) // 512
    data = mx.array(ids[: rows * 512]).reshape(rows, 512)
    model, tokenizer, config = load(str(base), return_config=True)
    t0 = time.perf_counter()
    model, config["quantization"] = gptq_quantize(model, data, 4, 64, 4, 64, batch_size=1)
    seconds = time.perf_counter() - t0
    out = args.work / f"mlx-gptq-from-{args.base}"
    shutil.rmtree(out, ignore_errors=True)
    save(str(out), str(base), model, tokenizer, config)
    record = {"tool": f"mlx-lm {mlx_lm.__version__} gptq_quantize", "bits": 4, "group_size": 64, "base": args.base, "tokens": rows * 512,
              "seconds": round(seconds, 1), "dir": str(out)}
    (out / "vendor.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
