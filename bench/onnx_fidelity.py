"""Measure the onnx backend's fidelity per tiny variant x precision (table for docs/fidelity.md).

    python bench/onnx_fidelity.py              # default options, every precision
    python bench/onnx_fidelity.py --options    # int4/int8 option sweep (symmetry, block, accuracy_level, lm_head)
    python bench/onnx_fidelity.py --crossing   # LongRoPE: generation crossing the original context
    python bench/onnx_fidelity.py --moe        # the tiny PhiMoE (MoE / QMoE), every precision
    python bench/onnx_fidelity.py --moe --options   # the int4/int8 option sweep on it
    python bench/onnx_fidelity.py --moe --large     # conversion time / peak RSS, 8- and 16-expert checkpoints

Each export runs in onnxruntime-genai on CPU on the shared test prompts (Hugging Face token ids);
logits at every position come from one genai step over the whole prompt. KL(oracle || onnx),
top-1 agreement and max |dlogit| are taken over all positions against phi_quant.reference.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", message=".*numpy reference quantizer.*")

SWEEP = [
    ("int4", {}),
    ("int4", {"symmetric": False}),
    ("int4", {"block_size": 128}),
    ("int4", {"accuracy_level": 0}),
    ("int4", {"lm_head": "int8"}),
    ("int4", {"lm_head": "fp16", "embeddings": "fp16"}),
    ("int8", {}),
    ("int8", {"accuracy_level": 0}),
    ("int8", {"symmetric": False}),
]


def _measure(src, ref, prompts, precision: str, extra: dict, work: Path) -> tuple[float, float, float, float, int]:
    from phi_quant.fidelity import compare_logits
    from phi_quant.types import ExportOptions, NullProgress
    from phi_quant_onnx import plugin

    out = Path(tempfile.mkdtemp(dir=work))
    opts = dict(extra)
    sym = opts.pop("symmetric", None)
    plugin.export(source=src, output_dir=out, options=ExportOptions(precision=precision, symmetric=sym, extra=opts),
                  progress=NullProgress())
    model = plugin.load_model(path=out, options={})
    kl_sum = kl_max = top1 = worst = 0.0
    n = 0
    for ids, want in prompts:
        r = compare_logits(want, model.logits(ids))
        kl_sum += r.kl_mean * r.positions
        kl_max = max(kl_max, r.kl_max)
        top1 += r.top1_agreement * r.positions
        worst = max(worst, r.max_abs_diff)
        n += r.positions
    model.close()
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return kl_sum / n, kl_max, top1 / n, worst, size


def fidelity(sweep: bool, moe: bool = False) -> None:
    from phi_quant.model.source import open_model
    from phi_quant.reference import ReferenceModel
    from phi_quant.testing.factory import MOE_VARIANTS, VARIANTS, cached_checkpoint
    from phi_quant.testing.prompts import test_prompts

    cases = SWEEP if sweep else [(p, {}) for p in ("fp32", "fp16", "bf16", "int8", "int4")]
    print("| variant | precision | options | KL mean | KL max | top-1 | max abs dlogit | size KiB |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in MOE_VARIANTS if moe else VARIANTS:
            with open_model(cached_checkpoint(variant)) as src:
                ref = ReferenceModel.from_source(src)
                tok = src.hf_tokenizer()
                prompts = []
                for p in test_prompts(variant):
                    ids = tok.encode(p, add_special_tokens=False).ids
                    prompts.append((ids, ref.logits(ids)))
                for precision, extra in cases:
                    kl, klx, t1, d, size = _measure(src, ref, prompts, precision, extra, Path(tmp))
                    opt = ", ".join(f"{k}={v}" for k, v in extra.items()) or "defaults"
                    print(f"| {variant} | {precision} | {opt} | {kl:.3g} | {klx:.3g} | {t1:.4f} | {d:.3g} | {size // 1024} |")


def crossing() -> None:
    """Logit error of steps through genai's KV cache when a generation crosses the original context."""
    from phi_quant.model.source import open_model
    from phi_quant.reference import ReferenceModel
    from phi_quant.testing.factory import cached_checkpoint
    from phi_quant.testing.prompts import test_prompts
    from phi_quant.types import ExportOptions, NullProgress
    from phi_quant_onnx import plugin

    print("| variant | step | sequence length | max abs dlogit vs oracle (full sequence) | same top-1 |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("phi3.5-longrope", "phi4-mini"):
            with open_model(cached_checkpoint(variant)) as src:
                orig = src.config.rope.original_max_position
                ref = ReferenceModel.from_source(src)
                tok = src.hf_tokenizer()
                long_ids = max((tok.encode(p, add_special_tokens=False).ids for p in test_prompts(variant)), key=len)
                prompt, cont = long_ids[: orig - 3], long_ids[orig - 3 : orig + 5]
                out = Path(tmp) / variant
                out.mkdir()
                plugin.export(source=src, output_dir=out, options=ExportOptions(precision="fp32"), progress=NullProgress())
                model = plugin.load_model(path=out, options={})
                inc = model.incremental_logits(prompt, cont)
                model.close()
                for i in range(len(cont) + 1):
                    seq = prompt + cont[:i]
                    want = ref.logits(seq)[-1]
                    d = float(np.abs(inc[i] - want).max())
                    print(f"| {variant} | {i} | {len(seq)} | {d:.3g} | {int(inc[i].argmax()) == int(want.argmax())} |")


def large_moe() -> None:
    """Convert the kit's generated PhiMoE checkpoints (same shapes, 8 or 16 experts) in fresh processes."""
    import time

    from phi_quant.testing.kit_streaming import MOE_EXPERTS, large_moe_checkpoint, measure_conversion_rss
    from phi_quant.types import ExportOptions

    print("| experts | checkpoint MiB | precision | seconds | peak RSS MiB |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("int4", "int8", "fp16"):
            for n in MOE_EXPERTS:
                start = time.perf_counter()
                peak, size, error = measure_conversion_rss("onnx", ExportOptions(precision=precision),
                                                           Path(tmp) / f"{precision}-{n}", checkpoint=large_moe_checkpoint(n))
                seconds = time.perf_counter() - start
                print(f"| {n} | {size:.0f} | {precision} | {seconds:.1f} | {peak:.0f} |" + (f" {error}" if error else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--options", action="store_true", help="int4/int8 option sweep instead of the precision table")
    ap.add_argument("--crossing", action="store_true", help="LongRoPE generation crossing the original context")
    ap.add_argument("--moe", action="store_true", help="the tiny PhiMoE instead of the dense variants")
    ap.add_argument("--large", action="store_true", help="with --moe: conversion of the generated >= 1 GB PhiMoE")
    args = ap.parse_args()
    if args.moe and args.large:
        large_moe()
    elif args.crossing:
        crossing()
    else:
        fidelity(args.options, args.moe)


if __name__ == "__main__":
    main()
