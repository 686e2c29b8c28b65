"""``phi-quant plugins``: which backends are installed, what they offer, which failed to load."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from ..errors import PhiQuantError
from ..plugins import get_manager
from ._common import emit_json, json_option, table

__all__ = ["command", "describe_backends"]


def describe_backends() -> dict[str, Any]:
    """Every backend with its metadata (architectures included) and precisions, and every failure (JSON-ready)."""
    mgr = get_manager()
    backends = []
    failures = [f.as_dict() for f in mgr.failures()]
    for b in mgr.backends():
        entry: dict[str, Any] = dataclasses.asdict(b.info)
        try:
            entry["precisions"] = [dataclasses.asdict(p) for p in b.precisions()]
        except PhiQuantError as exc:
            entry["precisions"] = []
            failures.append({"name": b.name, "distribution": b.info.distribution, "error": str(exc)})
        backends.append(entry)
    return {"backends": backends, "failures": failures}


def _run_check(name: str, as_json: bool, plugin: str | None = None, streaming: bool = True) -> None:
    try:
        from ..testing.kit import run_kit
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"the conformance kit is not available ({exc.name} is missing); "
            "install phi-quant with its testing extras: pip install 'phi-quant[test]'"
        ) from exc
    if plugin is None:
        get_manager().get(name)  # a clear error when the backend is missing
    kw = {"plugin": plugin} if plugin else {}
    results = [(str(c), bool(p), str(m)) for c, p, m in run_kit(name, streaming=streaming, **kw)]
    failed = [r for r in results if not r[1]]
    if as_json:
        emit_json({
            "backend": name,
            "passed": not failed,
            "checks": [{"check": c, "passed": p, "message": m} for c, p, m in results],
        })
    else:
        skipped = [r for r in results if r[1] and r[2].startswith("skipped")]
        click.echo(table(["check", "result", "message"],
                         [(c, ("skip" if (c, p, m) in skipped else "pass") if p else "FAIL", m) for c, p, m in results]))
        click.echo(f"\n{len(results) - len(failed) - len(skipped)}/{len(results)} checks passed for {name}"
                   + (f", {len(skipped)} skipped" if skipped else ""))
    if failed or not results:
        raise SystemExit(1)


@click.command("plugins")
@json_option
@click.option("--check", "check", metavar="NAME", help="Run the conformance kit against backend NAME.")
@click.option("--plugin", "plugin", metavar="MODULE",
              help="With --check: import this plugin module and check it before it is packaged/installed.")
@click.option("--no-streaming", "no_streaming", is_flag=True,
              help="With --check: skip the peak-memory check on generated 0.55/1.1 GB checkpoints (the slow one).")
def command(as_json: bool, check: str | None, plugin: str | None, no_streaming: bool) -> None:
    """List installed backends: distribution, version, format, runtime, architectures and precisions."""
    if (plugin or no_streaming) and not check:
        raise click.UsageError("--plugin and --no-streaming need --check NAME")
    if check:
        _run_check(check, as_json, plugin, streaming=not no_streaming)
        return
    data = describe_backends()
    if as_json:
        emit_json(data)
        return
    rows = [
        (
            b["name"],
            b["distribution"] or "(in-process)",
            b["version"],
            b["format"],
            b["runtime"],
            ", ".join(b["architectures"]) or "-",
            ", ".join(f"{p['precision']} ({p['scheme']})" for p in b["precisions"]) or "-",
        )
        for b in data["backends"]
    ]
    if rows:
        click.echo(table(["backend", "distribution", "version", "format", "runtime", "architectures", "precisions"], rows))
    else:
        click.echo("No backends installed. Install one, e.g.: pip install phi-quant-llamacpp")
    for f in data["failures"]:
        dist = f" ({f['distribution']})" if f["distribution"] else ""
        click.echo(f"FAILED {f['name']}{dist}: {f['error']}", err=True)
