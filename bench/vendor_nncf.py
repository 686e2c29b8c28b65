"""Vendor recipe: NNCF's data-aware INT4 weight compression on phi-quant's own float OpenVINO IR.

Not a test. ``nncf.compress_weights`` runs on the OpenVINO model itself (no torch): this script
exports the model at fp16 with phi-quant's openvino backend, feeds NNCF the same calibration
tokens phi-quant calibrates on (``phi_quant.texts.calibration_text()``, the first N tokens in
windows of 512, each a stateful-IR sample with input_ids / attention_mask / position_ids /
beam_idx), and writes one output directory per NNCF recipe next to it, tokenizer IRs copied, so
``bench/calibration_fidelity.py vendor:DIR:openvino`` measures it in OpenVINO GenAI exactly as our
own outputs. The NNCF settings mirror phi-quant's default openvino int4 plan (INT4_ASYM, group
128 adjusted down where it does not divide a layer's input, embeddings and the last matmul at the
INT8_ASYM backup, ratio 1), so the sizes match ours.

    python bench/vendor_nncf.py --model real:smollm2 --work /tmp/bench --tokens 2048 rtn awq_se gptq
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RECIPES = {
    "rtn": {},
    "awq": {"awq": True},
    "awq_se": {"awq": True, "scale_estimation": True},
    "gptq": {"gptq": True},
    "awq_gptq_se": {"awq": True, "gptq": True, "scale_estimation": True},
}


def _samples(model: str, tokens: int) -> list[dict]:
    from phi_quant.convert import open_source
    from phi_quant.texts import calibration_text

    with open_source(model) as src:
        ids = src.hf_tokenizer().encode(calibration_text().text, add_special_tokens=False).ids[:tokens]
    out = []
    for i in range(0, len(ids), 512):
        w = np.asarray(ids[i : i + 512], np.int64)[None, :]
        out.append({"input_ids": w, "attention_mask": np.ones_like(w), "position_ids": np.arange(w.shape[1])[None, :],
                    "beam_idx": np.zeros(1, np.int32)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="+", choices=sorted(RECIPES))
    ap.add_argument("--model", default="real:smollm2")
    ap.add_argument("--work", type=Path, default=Path("/tmp/phi-quant-calibration-bench"))
    ap.add_argument("--tokens", type=int, default=2048)
    args = ap.parse_args()
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    base = args.work / "openvino-fp16"
    if not (base / "openvino_model.xml").exists():
        subprocess.run([sys.executable, "-m", "phi_quant.cli", "quantize", args.model, "-b", "openvino", "-p", "fp16",
                        "-o", str(base), "--force", "-q"], check=True)
    samples = _samples(args.model, args.tokens)
    for name in args.recipes:
        out = args.work / f"nncf-{name}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(base, out, ignore=shutil.ignore_patterns("openvino_model.*"))
        model = ov.Core().read_model(base / "openvino_model.xml")
        kw = dict(RECIPES[name])
        t0 = time.perf_counter()
        compressed = nncf.compress_weights(
            model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=128, ratio=1.0,
            dataset=nncf.Dataset(samples) if kw else None, subset_size=len(samples), **kw,
            advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))
        seconds = time.perf_counter() - t0
        ov.save_model(compressed, out / "openvino_model.xml", compress_to_fp16=False)
        manifest = json.loads((out / "phi-quant.json").read_text())
        manifest.update(precision="int4", scheme=f"nncf {name}", quantization=None,
                        notes=[f"nncf {nncf.__version__} compress_weights {kw or 'rtn'} on the fp16 IR, {seconds:.1f} s"])
        (out / "phi-quant.json").write_text(json.dumps(manifest, indent=1))
        record = {"tool": f"nncf {nncf.__version__}", "recipe": name, "settings": kw, "tokens": args.tokens,
                  "seconds": round(seconds, 1), "dir": str(out)}
        (out / "vendor.json").write_text(json.dumps(record, indent=1))
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
