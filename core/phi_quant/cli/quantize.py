"""``phi-quant quantize MODEL --backend B --precision P -o OUT``: the main job."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..convert import convert
from ..progress import make_progress
from ..quant.budget import POLICY_NAMES
from ..types import PRECISIONS, ExportOptions
from ._common import calibration_options, emit_json, fmt_bytes, json_option, parse_options, recipe_option

__all__ = ["command"]


@click.command("quantize")
@click.argument("model")
@click.option("--backend", "-b", required=True, help="Backend name (see `phi-quant plugins`).")
@click.option("--precision", "-p", required=True, type=click.Choice(PRECISIONS), help="Target precision.")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Output directory (must not exist).")
@click.option("--group-size", type=int, help="Quantization group/block size (backend default if omitted).")
@click.option("--symmetric/--asymmetric", default=None, help="Symmetric or asymmetric integer quantization.")
@click.option("--scheme", help="Backend-native scheme, e.g. Q4_K_M for llamacpp.")
@recipe_option()
@calibration_options
@click.option("--bits-per-weight", type=float, metavar="X",
              help="Size budget: choose each tensor's bits so the weights take about X bits per parameter.")
@click.option("--policy", type=click.Choice(POLICY_NAMES, case_sensitive=False),
              help="Named per-tensor precision policy, e.g. q4_k_m (llama.cpp's Q4_K_M rule) for any backend.")
@click.option("--context-length", type=int, help="Context length you will deploy with (LongRoPE choices, KV cache).")
@click.option("--target", help="Target device, e.g. cpu, cuda, npu (backend specific).")
@click.option("--threads", type=int, help="Threads for quantization and the runtime.")
@click.option("--option", "extra", multiple=True, metavar="KEY=VALUE", help="Backend option (repeatable).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (the old one is kept until the new one is complete).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_option
def command(model, backend, precision, output, group_size, symmetric, scheme, recipe, calibration, calibration_tokens,
            calibration_cache, bits_per_weight, policy, context_length, target, threads, extra, force, quiet,
            as_json) -> None:
    """Quantize MODEL (local directory, hub id or tiny:<variant>) and export it with BACKEND."""
    options = ExportOptions(
        precision=precision,
        group_size=group_size,
        symmetric=symmetric,
        scheme=scheme,
        context_length=context_length,
        target=target,
        threads=threads,
        extra=parse_options(extra),
        recipe=recipe.lower() if recipe else None,
        calibration=str(calibration) if calibration else None,
        calibration_tokens=calibration_tokens,
        calibration_cache=str(calibration_cache) if calibration_cache else None,
        bits_per_weight=bits_per_weight,
        policy=policy.lower() if policy else None,
    )
    progress = make_progress(quiet=quiet or as_json)
    if os.environ.get("PHI_QUANT_TEST_HOLD_DIR"):  # tests only: stop mid-export (phi_quant.testing.hold)
        from ..testing.hold import maybe_hold

        progress = maybe_hold(progress, output)
    result = convert(model, backend, options, output, force=force, progress=progress)
    if as_json:
        emit_json(result.as_dict())
        return
    click.echo(f"Wrote {result.output} ({fmt_bytes(result.output_bytes)}, {result.backend} {result.precision} "
               f"scheme {result.scheme}) in {result.seconds:.1f} s")
    quant = (result.manifest or {}).get("quantization") or {}
    if quant:
        click.echo(f"  recipe {quant.get('recipe')}, {quant.get('bits_per_weight')} bits per weight: "
                   + ", ".join(f"{n} x{c}" for n, c in (quant.get("schemes") or {}).items()))
    calib = (result.manifest or {}).get("calibration") or {}
    if calib:
        from ..calib.synthetic import SYNTHETIC  # the conversion that calibrated has loaded phi_quant.calib

        st = calib.get("statistics") or {}
        text = st.get("text") or {}
        what = ("synthetic token ids (no text; " if text.get("name") == SYNTHETIC
                else f"tokens of {text.get('name')} text (")
        click.echo(f"  calibrated on {st.get('tokens')} {what}sha256 {str(text.get('sha256', ''))[:12]})"
                   + (f", statistics kept in {st['cache']}" if st.get("cache") else ""))
    for note in result.notes:
        click.echo(f"  note: {note}")
    click.echo(f'Run it: phi-quant run {result.output} --prompt "Hello"')
