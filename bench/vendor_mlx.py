"""Vendor recipe: mlx-lm's own GPTQ (``mlx_lm.quant.gptq.gptq_quantize``) on phi-quant's bf16 MLX export.

Not a test. ``mlx_lm.gptq`` downloads its calibration text from the internet; this script calls the
same function with phi-quant's calibration tokens instead (``phi_quant.texts.calibration_text()``,
the first ``--tokens`` in rows of 512), at mlx-lm's ``convert -q`` settings that phi-quant's mlx int4
matches (4 bits, group 64, and 4/64 for what GPTQ does not touch: the tied embedding), and saves with
``mlx_lm.utils.save`` so ``bench/calibration_fidelity.py "vendor|DIR|mlx"`` runs it in mlx-lm as our own
outputs. (mlx-lm's AWQ has no phi3 support; DWQ is a distillation training run, not tried here.)

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
    args = ap.parse_args()
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.quant.gptq import gptq_quantize
    from mlx_lm.utils import load, save

    from phi_quant.convert import open_source
    from phi_quant.texts import calibration_text

    base = args.work / "mlx-bf16"
    if not (base / "config.json").exists():
        subprocess.run([sys.executable, "-m", "phi_quant.cli", "quantize", args.model, "-b", "mlx", "-p", "bf16",
                        "-o", str(base), "--force", "-q"], check=True)
    with open_source(args.model) as src:
        ids = src.hf_tokenizer().encode(calibration_text().text, add_special_tokens=False).ids[: args.tokens]
    rows = len(ids) // 512
    data = mx.array(ids[: rows * 512]).reshape(rows, 512)
    model, tokenizer, config = load(str(base), return_config=True)
    t0 = time.perf_counter()
    model, config["quantization"] = gptq_quantize(model, data, 4, 64, 4, 64, batch_size=1)
    seconds = time.perf_counter() - t0
    out = args.work / "mlx-gptq"
    shutil.rmtree(out, ignore_errors=True)
    save(str(out), str(base), model, tokenizer, config)
    record = {"tool": f"mlx-lm {mlx_lm.__version__} gptq_quantize", "bits": 4, "group_size": 64, "tokens": rows * 512,
              "seconds": round(seconds, 1), "dir": str(out)}
    (out / "vendor.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
