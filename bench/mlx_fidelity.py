"""Measure the mlx backend: fidelity per tiny variant x precision, LongRoPE divergence, conversion cost.

    python bench/mlx_fidelity.py             # fidelity table (Markdown) for docs/fidelity.md
    python bench/mlx_fidelity.py --longrope  # plain mlx-lm vs the oracle on short/long prompts
    python bench/mlx_fidelity.py --large [--speed]  # ~1.1 GB checkpoint: time, peak RSS (+ mlx-lm speed)
    python bench/mlx_fidelity.py --vs-mlx-lm --precisions int4,int8   # same, against mlx_lm.convert
    python bench/mlx_fidelity.py --variants phimoe                     # the tiny PhiMoE's table
    python bench/mlx_fidelity.py --moe --vs-mlx-lm --precisions int4   # 1.1 GB PhiMoE (16 experts) vs mlx_lm.convert

Fidelity: the export runs in mlx-lm (``mlx_lm.load``, one full-sequence model call) on the
shared test prompts (HF token ids); KL(oracle || mlx), top-1 and max |dlogit| over every
position against phi_quant.reference. The default table uses the plugin's "auto" LongRoPE
policy (factors chosen per sequence, as transformers does); ``--longrope`` measures what
plain ``mlx_lm.load`` computes from config.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")


def _setup(variant):
    from phi_quant.model.source import open_model
    from phi_quant.reference import ReferenceModel
    from phi_quant.testing.factory import cached_checkpoint
    from phi_quant.testing.prompts import test_prompts

    src = open_model(cached_checkpoint(variant))
    tok = src.hf_tokenizer()
    ids = [tok.encode(p, add_special_tokens=False).ids for p in test_prompts(variant)]
    ref = ReferenceModel.from_source(src)
    return src, ids, [ref.logits(i) for i in ids]


def _export(src, precision, **kw):
    from phi_quant.types import ExportOptions, NullProgress
    from phi_quant_mlx import plugin

    out = Path(tempfile.mkdtemp(prefix="mlx-bench-"))
    extra = kw.pop("extra", {})
    plugin.export(source=src, output_dir=out, options=ExportOptions(precision=precision, extra=extra, **kw),
                  progress=NullProgress())
    return out


def _measure(path, ids, refs, longrope="auto"):
    from phi_quant.fidelity import compare_logits
    from phi_quant_mlx import plugin

    m = plugin.load_model(path=path, options={"longrope": longrope})
    try:
        got = [m.logits(i) for i in ids]
    finally:
        m.close()
    return compare_logits(np.concatenate(refs), np.concatenate(got))


def _row(*cells):
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def fidelity(extra_options: dict, variants) -> None:
    _row("variant", "precision", "KL mean", "KL max", "top-1", "max abs dlogit", "weights KiB")
    _row(*["---"] * 7)
    for variant in variants:
        src, ids, refs = _setup(variant)
        for precision in PRECISIONS:
            opts = dict(extra_options) if precision in ("int8", "int4") else {}
            out = _export(src, precision, extra=opts)
            r = _measure(out, ids, refs)
            size = sum(f.stat().st_size for f in out.glob("model*.safetensors")) / 1024
            _row(variant, precision, f"{r.kl_mean:.2e}", f"{r.kl_max:.2e}", f"{r.top1_agreement:.4f}",
                 f"{r.max_abs_diff:.2e}", f"{size:.0f}")
        src.close()


def longrope() -> None:
    _row("variant", "export", "prompts", "KL mean", "top-1", "max abs dlogit")
    _row(*["---"] * 6)
    for variant in ("phi3.5-longrope", "phi4-mini"):
        src, ids, refs = _setup(variant)
        orig = src.config.rope.original_max_position
        groups = {
            f"short (<= {orig} tokens)": [k for k, i in enumerate(ids) if len(i) <= orig],
            f"long (> {orig} tokens)": [k for k, i in enumerate(ids) if len(i) > orig],
        }
        for label, kw in (("default", {}), (f"--context-length {orig}", {"context_length": orig})):
            out = _export(src, "fp32", **kw)
            for name, idx in groups.items():
                r = _measure(out, [ids[k] for k in idx], [refs[k] for k in idx], longrope="config")
                _row(variant, label, name, f"{r.kl_mean:.2e}", f"{r.top1_agreement:.4f}", f"{r.max_abs_diff:.2e}")
        src.close()


_CONVERT = """
import sys, time
from phi_quant.model.source import open_model
from phi_quant.types import ExportOptions, NullProgress
from phi_quant_mlx import plugin
t0 = time.perf_counter()
with open_model(sys.argv[1]) as src:
    plugin.export(source=src, output_dir=__import__('pathlib').Path(sys.argv[2]),
                  options=ExportOptions(precision=sys.argv[3]), progress=NullProgress())
print(f"SECONDS {time.perf_counter() - t0:.2f}")
"""


def _peak_rss_run(args, code=_CONVERT):
    """Run a conversion in a child process and sample its RSS (MiB) every 20 ms."""
    import subprocess
    import sys

    import psutil

    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out = proc.stdout.read()
    secs = float(out.split("SECONDS")[-1]) if "SECONDS" in out else float("nan")
    return peak / 2**20, secs, proc.returncode


def _speed(path, prompt_tokens=64, new_tokens=16):
    import mlx.core as mx
    from mlx_lm import stream_generate

    from phi_quant_mlx import plugin

    m = plugin.load_model(path=path, options={})
    ids = [int(i) for i in np.random.default_rng(0).integers(100, 400, prompt_tokens)]
    last = None
    for r in stream_generate(m.model, m.tokenizer, ids, max_tokens=new_tokens, logits_processors=[m.mask_padding]):
        last = r
    m.close()
    mx.clear_cache()
    return last.prompt_tps, last.generation_tps, last.peak_memory


_MLX_LM_CONVERT = """
import sys, time
from mlx_lm.convert import convert
t0 = time.perf_counter()
bits = {"int4": 4, "int8": 8}.get(sys.argv[3])
convert(sys.argv[1], sys.argv[2], quantize=bits is not None, q_bits=bits, q_group_size=64 if bits else None,
        dtype={"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(sys.argv[3]))
print(f"SECONDS {time.perf_counter() - t0:.2f}")
"""


def _same_tensors(ours: Path, theirs: Path) -> str:
    """Compare every tensor of two mlx folders bit for bit (names, dtypes, shapes, bytes)."""
    import mlx.core as mx

    def load(d):
        out = {}
        for f in sorted(d.glob("model*.safetensors")):
            out.update(mx.load(str(f)))
        return out

    a, b = load(ours), load(theirs)
    if set(a) != set(b):
        return f"names differ: {sorted(set(a) ^ set(b))[:4]}"
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{k}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        if x.dtype in (mx.bfloat16, mx.float16):
            x, y = x.view(mx.uint16), y.view(mx.uint16)
        if not mx.array_equal(x, y).item():
            return f"{k}: bytes differ"
    return f"all {len(a)} tensors identical"


def _make_large(directory: Path, moe: bool) -> Path:
    """The ~1.1 GB dense checkpoint, or (``moe``) the 1.11 GB PhiMoE one with 16 experts."""
    from phi_quant.testing.factory import make_large_checkpoint, make_large_moe_checkpoint

    return make_large_moe_checkpoint(directory, 16) if moe else make_large_checkpoint(directory)


def vs_mlx_lm(precisions, moe: bool = False) -> None:
    """Our export vs ``mlx_lm.convert`` on the large checkpoint: cost, and tensors bit for bit."""
    import shutil

    work = Path(tempfile.mkdtemp(prefix="mlx-vs-"))
    try:
        ckpt = _make_large(work / "ckpt", moe)
        _row("precision", "tool", "convert s", "peak RSS MiB", "output MiB", "tensors vs mlx_lm.convert")
        _row(*["---"] * 6)
        for precision in precisions:
            ours, theirs = work / f"ours-{precision}", work / f"theirs-{precision}"
            ours.mkdir()
            rss, secs, rc = _peak_rss_run([str(ckpt), str(ours), precision])
            rss2, secs2, rc2 = _peak_rss_run([str(ckpt), str(theirs), precision], code=_MLX_LM_CONVERT)
            same = _same_tensors(ours, theirs) if rc == 0 and rc2 == 0 else "n/a"
            size = lambda d: sum(f.stat().st_size for f in d.glob("model*.safetensors")) / 2**20  # noqa: E731
            _row(precision, "phi-quant mlx", f"{secs:.1f}", f"{rss:.0f}", f"{size(ours):.0f}", same)
            _row(precision, "mlx_lm.convert", f"{secs2:.1f}", f"{rss2:.0f}", f"{size(theirs):.0f}" if rc2 == 0 else "failed", "")
            shutil.rmtree(ours, ignore_errors=True)
            shutil.rmtree(theirs, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def large(precisions, speed: bool, moe: bool = False) -> None:
    import shutil

    work = Path(tempfile.mkdtemp(prefix="mlx-large-"))
    try:
        ckpt = _make_large(work / "ckpt", moe)
        size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 2**20
        print(f"checkpoint: {size:.0f} MiB of safetensors", flush=True)
        _row("precision", "convert s", "peak RSS MiB", "output MiB", "prompt tok/s", "gen tok/s", "mlx peak GB")
        _row(*["---"] * 7)
        for precision in precisions:
            out = work / f"out-{precision}"
            out.mkdir()
            rss, secs, rc = _peak_rss_run([str(ckpt), str(out), precision])
            if rc != 0:
                _row(precision, "failed", f"{rss:.0f}", "", "", "", "")
                continue
            osize = sum(f.stat().st_size for f in out.glob("model*.safetensors")) / 2**20
            ptps, gtps, peak = _speed(out) if speed else (float("nan"),) * 3
            _row(precision, f"{secs:.1f}", f"{rss:.0f}", f"{osize:.0f}", f"{ptps:.1f}", f"{gtps:.1f}", f"{peak:.2f}")
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--longrope", action="store_true", help="plain mlx-lm vs the oracle, short and long prompts")
    ap.add_argument("--large", action="store_true", help="convert a ~1.1 GB checkpoint: time, peak RSS, speed")
    ap.add_argument("--vs-mlx-lm", action="store_true", help="large checkpoint: ours vs mlx_lm.convert, bit for bit")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--speed", action="store_true", help="with --large: also time mlx-lm (64-token prompt, 16 new)")
    ap.add_argument("--dtype", help="dtype option for int exports (float16, float32, bfloat16)")
    ap.add_argument("--variants", help="tiny variants of the fidelity table (default: the dense ones; phimoe)")
    ap.add_argument("--moe", action="store_true", help="with --large/--vs-mlx-lm: the 16-expert PhiMoE checkpoint")
    args = ap.parse_args()
    if args.longrope:
        longrope()
    elif args.vs_mlx_lm:
        vs_mlx_lm(args.precisions.split(","), args.moe)
    elif args.large:
        large(args.precisions.split(","), args.speed, args.moe)
    else:
        from phi_quant.testing.factory import VARIANTS

        variants = args.variants.split(",") if args.variants else VARIANTS
        fidelity({"dtype": args.dtype} if args.dtype else {}, variants)


if __name__ == "__main__":
    main()
