"""Measure the openvino backend on the tiny PhiMoE: fidelity per precision and option, and what
keeping the routers in float is worth.

    python bench/openvino_phimoe_fidelity.py          # Markdown table for docs/fidelity.md

Each export runs in OpenVINO's CPU plugin (f32 inference, f32 KV cache, no dynamic
quantization, as the backend's runtime sets them) on the shared test prompts, full-sequence
logits from an empty state; KL(oracle || OpenVINO), top-1 and max |dlogit| over every position
against phi_quant.reference (the PhiMoE oracle, equal to transformers' PhimoeForCausalLM).
The "router quantized" rows put the routers through the same integer plan as every other matmul
(what NNCF's compress_weights would do to the router MatMul), for comparison with the default.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np

CASES = [
    ("fp32", {}, {}), ("fp16", {}, {}),
    ("int8", {}, {}), ("int8", {"symmetric": True}, {}),
    ("int4", {}, {}), ("int4", {"symmetric": True}, {}), ("int4", {"group_size": 64}, {}),
    ("int4", {}, {"preset": "npu"}),
]
ROUTER_QUANTIZED = [("int8", {}, {}), ("int4", {}, {})]


def _row(src, ids, ref, precision, kw, extra, router: str) -> str:
    from phi_quant.fidelity import compare_logits
    from phi_quant.types import ExportOptions, NullProgress
    from phi_quant_openvino.export import export_model
    from phi_quant_openvino.runtime import OpenVINOModel

    with tempfile.TemporaryDirectory() as d:
        res = export_model(src, Path(d), ExportOptions(precision=precision, extra=extra, **kw), NullProgress())
        size = (Path(d) / "openvino_model.bin").stat().st_size
        model = OpenVINOModel(Path(d), {})
        got = np.concatenate([model.logits(i) for i in ids])
        model.close()
    r = compare_logits(ref, got)
    options = " ".join([f"--{k.replace('_', '-')} {v}" if v is not True else f"--{k}" for k, v in kw.items()]
                       + [f"--option {k}={v}" for k, v in extra.items()]) or "-"
    return (f"| {precision} | {res.scheme} | {options} | {router} | {r.kl_mean:.3g} | {r.kl_max:.3g} | "
            f"{r.top1_agreement:.3f} | {r.max_abs_diff:.3g} | {size / 1024:.0f} |")


def main() -> None:
    from phi_quant.model.source import open_model
    from phi_quant.reference import ReferenceModel
    from phi_quant.testing.factory import cached_checkpoint
    from phi_quant.testing.prompts import test_prompts
    from phi_quant_openvino import phimoe

    with open_model(cached_checkpoint("phimoe")) as src:
        tok = src.hf_tokenizer()
        ids = [tok.encode(p, add_special_tokens=False).ids for p in test_prompts("phimoe")]
        oracle = ReferenceModel.from_source(src)
        ref = np.concatenate([oracle.logits(i) for i in ids])
        print(f"{sum(len(i) for i in ids)} positions, prompts of {', '.join(str(len(i)) for i in ids)} tokens\n")
        print("| precision | scheme | options | router | KL mean | KL max | top-1 | max abs dlogit | .bin KiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for precision, kw, extra in CASES:
            print(_row(src, ids, ref, precision, kw, extra, "fp16" if precision == "fp16" else "fp32"))
            sys.stdout.flush()
        with mock.patch.object(phimoe, "float_kept", lambda info: False):
            for precision, kw, extra in ROUTER_QUANTIZED:
                print(_row(src, ids, ref, precision, kw, extra, "quantized"))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
