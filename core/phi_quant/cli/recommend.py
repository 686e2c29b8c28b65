"""``phi-quant recommend MODEL``: which backend, precision and options suit a device, and why."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import BadInputError, PhiQuantError
from ..hardware import detect_machine
from ..options import check_runtime_options
from ..plugins import get_manager
from ..recommend import TARGETS, machine_profile, recommend
from ..sizing import GIB
from ._common import emit_json, fmt_bytes, json_option, table

__all__ = ["command"]


def _fidelity_from_report(path: Path) -> dict[tuple[str, str], float]:
    """Mean KL per (backend, precision) from a ``compare`` report.json."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"cannot read compare report {path}: {exc}") from exc
    return {
        (c["backend"], c["precision"]): float(c["kl_mean"])
        for c in data.get("cells", [])
        if c.get("status") == "ok" and c.get("kl_mean") is not None
    }


@click.command("recommend")
@click.argument("model")
@click.option("--target", type=click.Choice(sorted(TARGETS)), help="A device class (default: this machine).")
@click.option("--memory", "memory_gib", type=float, help="Memory of the device in GiB (overrides the target's).")
@click.option("--context-length", type=int, help="Tokens of context to budget the KV cache for.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "int4"]),
              help="Insist on a precision; refused when it does not fit.")
@click.option("--backend", help="Insist on a backend.")
@click.option("--report", "report", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A compare report.json whose measured KL figures replace the defaults.")
@json_option
def command(model, target, memory_gib, context_length, precision, backend, report, as_json) -> None:
    """Recommend backend + precision + options for MODEL on a device class or on this machine."""
    from ..convert import open_source

    check_runtime_options(context_length=context_length)
    if memory_gib is not None and not (0 < memory_gib < 1 << 20):
        raise BadInputError(f"--memory must be a number of GiB above 0, got {memory_gib:g}")

    with open_source(model) as src:
        config = src.config
    mgr = get_manager()
    installed = mgr.names()
    offered: dict[str, list[str]] = {}
    hardware: dict[str, dict] = {}
    for b in mgr.backends():
        try:
            offered[b.name] = [p.precision for p in b.precisions()]
        except PhiQuantError:
            continue
    if target:
        profile = TARGETS[target]
    else:
        machine = detect_machine()
        npu = False
        for name, rep in mgr.detect_hardware().items():
            if isinstance(rep, Exception):
                continue
            hardware[name] = {"devices": [d.get("name") for d in rep.devices], "accelerators": rep.accelerators}
            npu = npu or any("NPU" in str(d.get("name", "")).upper() for d in rep.devices)
        profile = machine_profile(machine.ram_available_bytes, apple_silicon=machine.apple_silicon,
                                  nvidia_vram=machine.nvidia_vram_bytes, npu=npu)
    rec = recommend(
        config,
        profile,
        installed_backends=installed,
        backend_precisions=offered or None,
        context_length=context_length,
        memory_bytes=int(memory_gib * GIB) if memory_gib else None,
        precision=precision,
        backend=backend,
        fidelity=_fidelity_from_report(report) if report else None,
        model_name=model,
    )
    if as_json:
        emit_json({**rec.as_dict(), "detected": hardware})
        return
    click.echo(f"Recommendation for {profile.description}:")
    click.echo(f"  backend {rec.backend}, precision {rec.precision}"
               + (f", options {rec.options}" if rec.options else ""))
    click.echo("")
    click.echo(click.wrap_text(rec.reason, width=100))
    click.echo("")
    click.echo(table(["precision", "needs", "fits"],
                     [[a["precision"], fmt_bytes(a["total_bytes"]), "yes" if a["fits"] else "no"]
                      for a in rec.alternatives]))
    click.echo("")
    click.echo(f"Run: {rec.command}")
