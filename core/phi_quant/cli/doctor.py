"""``phi-quant doctor``: this machine, what each backend can use here, and which models fit."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from ..hardware import detect_machine
from ..model.config import PhiConfig, normalize_config
from ..options import check_runtime_options
from ..plugins import get_manager
from ..sizing import estimate_memory, format_count
from ._common import emit_json, fmt_bytes, json_option, table

__all__ = ["command", "PUBLISHED_SHAPES", "fits_table"]

#: Shapes of the published Phi models (config.json values), for "what fits" without a download.
PUBLISHED_SHAPES: dict[str, dict[str, Any]] = {
    "Phi-3.5-mini": dict(architectures=["Phi3ForCausalLM"], hidden_size=3072, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, intermediate_size=8192, vocab_size=32064,
                         max_position_embeddings=131072),
    "Phi-4-mini": dict(architectures=["Phi3ForCausalLM"], hidden_size=3072, num_hidden_layers=32,
                       num_attention_heads=24, num_key_value_heads=8, intermediate_size=8192, vocab_size=200064,
                       max_position_embeddings=131072, tie_word_embeddings=True),
    "Phi-4": dict(architectures=["Phi3ForCausalLM"], hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
                  num_key_value_heads=10, intermediate_size=17920, vocab_size=100352, max_position_embeddings=16384),
    # microsoft/Phi-3.5-MoE-instruct: 41,873,153,344 parameters, 6,640,999,744 active per token
    "Phi-3.5-MoE": dict(architectures=["PhiMoEForCausalLM"], hidden_size=4096, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, intermediate_size=6400, vocab_size=32064,
                        max_position_embeddings=131072, num_local_experts=16, num_experts_per_tok=2,
                        attention_bias=True, lm_head_bias=True),
}


def _published_configs() -> dict[str, PhiConfig]:
    return {name: normalize_config(dict(shape)) for name, shape in PUBLISHED_SHAPES.items()}


def fits_table(
    offered: dict[str, list[str]], models: dict[str, PhiConfig], available: int, context_length: int,
    writes: dict[str, tuple[str, ...]] | None = None,
) -> list[dict[str, Any]]:
    """One entry per backend × precision × model: bytes needed, whether the backend writes the
    model's architecture (``writes``: backend -> architectures; all when omitted) and whether it
    fits ``available``. A mixture of experts needs all its experts in memory."""
    rows = []
    for backend, precisions in sorted(offered.items()):
        for p in precisions:
            if p not in ("fp32", "fp16", "bf16", "int8", "int4"):
                continue
            for model, cfg in models.items():
                need = estimate_memory(cfg, "fp16" if p == "bf16" else p, context_length).total
                written = writes is None or cfg.arch_name in writes.get(backend, ())
                rows.append({"backend": backend, "precision": p, "model": model, "arch": cfg.arch_name,
                             "writes": written, "needs_bytes": need, "available_bytes": available,
                             "fits": written and need <= available})
    return rows


def _moe_notes(models: dict[str, PhiConfig]) -> list[str]:
    return [f"{name}: {format_count(cfg.parameter_count())} parameters, {format_count(cfg.active_parameter_count())} active "
            f"per token ({cfg.num_experts} experts, {cfg.experts_per_token} per token): memory must hold every expert, "
            "speed follows the active ones" for name, cfg in models.items() if cfg.is_moe]


@click.command("doctor")
@json_option
@click.option("--model", "model", metavar="MODEL", help="Check fit for this checkpoint instead of the published Phi models.")
@click.option("--context-length", type=int, default=4096, show_default=True, help="Context to budget the KV cache for.")
def command(as_json: bool, model: str | None, context_length: int) -> None:
    """Show CPU features, RAM, GPUs, what each backend sees, and which models fit in RAM."""
    check_runtime_options(context_length=context_length)
    machine = detect_machine()
    mgr = get_manager()
    hw = {}
    offered: dict[str, list[str]] = {}
    writes: dict[str, tuple[str, ...]] = {}
    for name, report in mgr.detect_hardware().items():
        hw[name] = dataclasses.asdict(report) if not isinstance(report, Exception) else {"error": str(report)}
    for b in mgr.backends():
        writes[b.name] = tuple(b.info.architectures)
        try:
            offered[b.name] = [p.precision for p in b.precisions()]
        except Exception as exc:  # noqa: BLE001 - doctor reports, never stops
            hw.setdefault(b.name, {})["error"] = str(exc)
    if model:
        from ..convert import open_source

        with open_source(model) as src:
            models = {model: src.config}
    else:
        models = _published_configs()
    fits = fits_table(offered, models, machine.ram_available_bytes, context_length, writes)
    data = {
        "machine": machine.as_dict(),
        "backends": hw,
        "failures": [f.as_dict() for f in mgr.failures()],
        "context_length": context_length,
        "fits": fits,
        "notes": _moe_notes(models),
    }
    if as_json:
        emit_json(data)
        return
    m = machine
    click.echo(f"OS        {m.os} ({m.arch})")
    click.echo(f"CPU       {m.cpu_model} — {m.cpu_cores_physical} cores / {m.cpu_cores_logical} threads")
    click.echo("ISA       " + " ".join(f"{k}{'+' if v else '-'}" for k, v in m.isa.items()))
    click.echo(f"RAM       {fmt_bytes(m.ram_total_bytes)} total, {fmt_bytes(m.ram_available_bytes)} available")
    gpus = ", ".join(g.get("name", "?") + (f" ({fmt_bytes(g['memory_total_bytes'])})" if g.get("memory_total_bytes") else "")
                     for g in m.gpus) or "none found"
    click.echo(f"GPUs      {gpus}")
    if m.apple_silicon:
        click.echo("Apple Silicon: yes (MLX and llama.cpp Metal can use the GPU)")
    click.echo("")
    if not hw:
        click.echo("No backends installed. Install one, e.g.: pip install phi-quant-llamacpp")
    for name, rep in hw.items():
        if "error" in rep and "available" not in rep:
            click.echo(f"{name:<10} ERROR {rep['error']}")
            continue
        state = "available" if rep.get("available") else "NOT available"
        devices = ", ".join(str(d.get("name", d)) for d in rep.get("devices", [])) or "-"
        accel = ", ".join(rep.get("accelerators", [])) or "-"
        click.echo(f"{name:<10} {state}; devices: {devices}; accelerators: {accel}")
        for note in rep.get("notes", []):
            click.echo(f"{'':<10} note: {note}")
    for f in data["failures"]:
        click.echo(f"{f['name']:<10} FAILED to load: {f['error']}")
    if fits:
        click.echo(f"\nFits this machine ({fmt_bytes(m.ram_available_bytes)} RAM available, "
                   f"context {context_length}; weights + KV cache + runtime):")
        names = list(models)
        rows = []
        for backend in sorted(offered):
            for p in offered[backend]:
                cells = [r for r in fits if r["backend"] == backend and r["precision"] == p]
                if cells:
                    rows.append([f"{backend} {p}"] + [
                        f"{'yes' if r['fits'] else 'no'} ({fmt_bytes(r['needs_bytes'])})" if r["writes"]
                        else f"- (writes no {r['arch']})" for r in cells])
        click.echo(table(["backend precision", *names], rows))
        for note in data["notes"]:
            click.echo(f"note: {note}")
