"""Measure the llamacpp backend: fidelity per tiny variant x scheme, and conversion cost.

    python bench/llamacpp_fidelity.py            # fidelity table (Markdown) for docs/fidelity.md
    python bench/llamacpp_fidelity.py --moe      # the same for the tiny PhiMoE, both phimoe_weights modes
    python bench/llamacpp_fidelity.py --large    # 1 GB checkpoint: time and peak RSS per scheme
    python bench/llamacpp_fidelity.py --large --moe   # PhiMoE checkpoints with 8 and 16 experts

Fidelity: the GGUF runs in llama-cpp-python on the shared test prompts (HF token ids) with the
backend's default "auto" context policy; KL(oracle || GGUF), top-1 and max |dlogit| are taken
over every position against phi_quant.reference. For PhiMoE the table also holds each GGUF
against what llama.cpp's phimoe graph computes from its weights (phi_quant_llamacpp.phimoe).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

SCHEMES = [("fp32", "F32"), ("fp16", "F16"), ("bf16", "BF16"), ("int8", "Q8_0"), ("int8", "Q6_K"),
           ("int8", "Q5_K_M"), ("int4", "Q4_K_M"), ("int4", "Q4_1"), ("int4", "Q4_0")]


def fidelity() -> None:
    from phi_quant.fidelity import compare_logits
    from phi_quant.model.source import open_model
    from phi_quant.reference import ReferenceModel
    from phi_quant.testing.factory import VARIANTS, cached_checkpoint
    from phi_quant.testing.prompts import test_prompts
    from phi_quant.types import ExportOptions, NullProgress
    from phi_quant_llamacpp import plugin

    print("| variant | scheme | KL mean | KL max | top-1 | max abs dlogit | n_ctx used (tokens: n_ctx, factors) | size KiB |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in VARIANTS:
        with open_model(cached_checkpoint(variant)) as src:
            tok = src.hf_tokenizer()
            ids = [tok.encode(p, add_special_tokens=False).ids for p in test_prompts(variant)]
            ref_model = ReferenceModel.from_source(src)
            ref = np.concatenate([ref_model.logits(i) for i in ids])
            for precision, scheme in SCHEMES:
                with tempfile.TemporaryDirectory() as d:
                    res = plugin.export(source=src, output_dir=Path(d), options=ExportOptions(precision=precision, scheme=scheme), progress=NullProgress())
                    size = (Path(d) / res.files[0]).stat().st_size
                    with plugin.load_model(path=Path(d), options={}) as m:
                        got = np.concatenate([m.logits(i) for i in ids])
                        ctx = sorted({(len(i), m.context_for(len(i))[0], "long" if m.uses_long_factors(len(i)) else "short") for i in ids if m.longrope})
                r = compare_logits(ref, got)
                ctx_s = "; ".join(f"{n}: {c}, {f}" for n, c, f in ctx) if ctx else "-"
                print(f"| {variant} | {scheme} | {r.kl_mean:.3g} | {r.kl_max:.3g} | {r.top1_agreement:.3f} | {r.max_abs_diff:.3g} | {ctx_s} | {size / 1024:.0f} |")
                sys.stdout.flush()


def moe_fidelity() -> None:
    from phi_quant.fidelity import compare_logits
    from phi_quant.model.source import open_model
    from phi_quant.reference import ReferenceModel
    from phi_quant.testing.factory import cached_checkpoint
    from phi_quant.testing.prompts import test_prompts
    from phi_quant.types import ExportOptions, NullProgress
    from phi_quant_llamacpp import plugin
    from phi_quant_llamacpp.phimoe import FaithfulPhiMoEReference, LlamaCppPhiMoEReference

    print("| weights | scheme | KL mean | KL max | top-1 | max abs dlogit | KL vs what llama.cpp computes | size KiB |")
    print("|---|---|---|---|---|---|---|---|")
    with open_model(cached_checkpoint("phimoe")) as src:
        tok = src.hf_tokenizer()
        ids = [tok.encode(p, add_special_tokens=False).ids for p in test_prompts("phimoe")]
        weights = {t.name: t.to_float32() for t in src.tensors()}
        oracle = np.concatenate([ReferenceModel(src.config, weights).logits(i) for i in ids])
        runtime = {"faithful": FaithfulPhiMoEReference(src.config, weights),
                   "as-is": LlamaCppPhiMoEReference(src.config, weights)}
        runtime_logits = {k: np.concatenate([m.logits(i) for i in ids]) for k, m in runtime.items()}
        for mode in ("faithful", "as-is"):
            for precision, scheme in SCHEMES if mode == "faithful" else SCHEMES[:1]:
                with tempfile.TemporaryDirectory() as d:
                    options = ExportOptions(precision=precision, scheme=scheme, extra={"phimoe_weights": mode})
                    res = plugin.export(source=src, output_dir=Path(d), options=options, progress=NullProgress())
                    size = (Path(d) / res.files[0]).stat().st_size
                    with plugin.load_model(path=Path(d), options={}) as m:
                        got = np.concatenate([m.logits(i) for i in ids])
                r, own = compare_logits(oracle, got), compare_logits(runtime_logits[mode], got)
                print(f"| {mode} | {scheme} | {r.kl_mean:.3g} | {r.kl_max:.3g} | {r.top1_agreement:.3f} | "
                      f"{r.max_abs_diff:.3g} | {own.kl_mean:.2g} | {size / 1024:.0f} |")
                sys.stdout.flush()


def large(moe: bool = False) -> None:
    from phi_quant.testing.kit_streaming import MOE_EXPERTS, large_checkpoint, large_moe_checkpoint

    if not moe:
        _convert_large(large_checkpoint(), [("int4", "Q4_0"), ("int8", "Q8_0"), ("fp16", "F16"), ("int4", "Q4_K_M")])
        return
    for n in MOE_EXPERTS:
        print(f"\nPhiMoE, {n} experts per layer")
        _convert_large(large_moe_checkpoint(n), [("int4", "Q4_0"), ("fp16", "F16"), ("int4", "Q4_K_M")])


def _convert_large(ckpt: Path, schemes: list[tuple[str, str]]) -> None:
    from phi_quant.testing.rss import run_with_peak_rss

    with tempfile.TemporaryDirectory() as d:
        size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        print(f"checkpoint {size / 1e9:.2f} GB")
        print("| scheme | seconds | MB/s (source) | peak RSS MiB | output MB |")
        print("|---|---|---|---|---|")
        for precision, scheme in schemes:
            out = Path(d) / f"out-{scheme}"
            out.mkdir()
            code = textwrap.dedent(f"""
                from pathlib import Path
                from phi_quant.model.source import open_model
                from phi_quant.types import ExportOptions, NullProgress
                from phi_quant_llamacpp import plugin
                with open_model({str(ckpt)!r}) as src:
                    plugin.export(source=src, output_dir=Path({str(out)!r}), options=ExportOptions(precision={precision!r}, scheme={scheme!r}), progress=NullProgress())
            """)
            t0 = time.perf_counter()
            result = run_with_peak_rss(code, check=True)
            dt = time.perf_counter() - t0
            peak = result.peak_rss
            osize = sum(f.stat().st_size for f in out.iterdir())
            print(f"| {scheme} | {dt:.1f} | {size / 1e6 / dt:.0f} | {peak / 2**20:.0f} | {osize / 1e6:.0f} |")
            sys.stdout.flush()
            for f in out.iterdir():
                f.unlink()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", action="store_true", help="measure conversion of a generated 1 GB checkpoint")
    ap.add_argument("--moe", action="store_true", help="the tiny / generated PhiMoE checkpoints instead")
    args = ap.parse_args()
    if args.large:
        large(args.moe)
    else:
        moe_fidelity() if args.moe else fidelity()
