"""``phi-quant batch MATRIX.yaml``: convert models × backends × precisions, here or on a Ray cluster."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .. import __version__
from ..batch import EXAMPLE, load_matrix, plan_batch, run_batch
from ..errors import ExportFailedError, PhiQuantError
from ..plugins import get_manager
from ..progress import MatrixProgress
from ..report import format_cell
from ._common import emit_json, json_option

__all__ = ["command"]

#: (key, header, format) of the summary table.
_COLUMNS = (("model", "model", "s"), ("backend", "backend", "s"), ("precision", "precision", "s"),
            ("scheme", "scheme", "s"), ("status", "status", "s"), ("size_bytes", "size (MiB)", "mib"),
            ("convert_seconds", "convert (s)", "f2"), ("output_dir", "output", "s"))


def _table(cells: list[dict]) -> str:
    rows = ["| " + " | ".join(h for _, h, _ in _COLUMNS) + " |", "|" + "|".join("---" for _ in _COLUMNS) + "|"]
    for c in cells:
        vals = []
        for key, _, fmt in _COLUMNS:
            v = c.get(key)
            if key == "status" and v == "failed":
                v = f"failed: {c.get('error', '')}".replace("|", "/").replace("\n", " ")[:120]
            vals.append(format_cell(v, fmt))
        rows.append("| " + " | ".join(vals) + " |")
    return "\n".join(rows)


@click.command("batch")
@click.argument("matrix", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
              help="Run the conversions as Ray tasks: auto, local, HOST:PORT or ray://HOST:PORT (phi-quant[ray]).")
@click.option("--jobs", type=click.IntRange(1, 1024), default=2, show_default=True,
              help="Conversions at once (on Ray: tasks in flight; Ray's memory requests still decide where they fit).")
@click.option("--dry-run", is_flag=True, help="Validate MATRIX and list the cells without converting anything.")
@click.option("--example", is_flag=True, help="Print an example matrix file and exit.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or per-cell lines.")
@json_option
def command(matrix, ray_address, jobs, dry_run, example, quiet, as_json) -> None:
    """Convert every model × backend × precision of MATRIX (a YAML file, see --example) without
    evaluating; each cell is a `phi-quant quantize` run, a failed cell does not stop the others.
    Writes OUTPUT/<model>/<backend>-<precision>/ per cell and OUTPUT/batch.json; exits 1 if a cell failed."""
    if example:
        click.echo(EXAMPLE, nl=False)
        return
    if matrix is None:
        raise click.UsageError("Missing argument 'MATRIX' (see `phi-quant batch --example`).")
    spec = load_matrix(matrix)
    mgr = get_manager()
    offered: dict[str, list[str]] = {}
    for name in spec.backends:
        backend = mgr.get(name)  # a backend that is not installed: the error names its package
        try:
            offered[name] = [p.precision for p in backend.precisions()]
        except PhiQuantError as exc:
            click.echo(f"skipping backend {name}: {exc}", err=True)
    cells, notes = plan_batch(spec, offered)
    for line in notes:
        click.echo(f"note: {line}", err=True)
    if dry_run:
        planned = [dict(c.record(), extra_args=list(c.spec.extra_args)) for c in cells]
        if as_json:
            emit_json({"matrix": str(matrix), "cells": planned})
        else:
            for c in planned:
                click.echo(f"{c['model']} {c['backend']} {c['precision']} -> {c['output_dir']}"
                           + (f" ({' '.join(c['extra_args'])})" if c["extra_args"] else ""))
        return
    progress = MatrixProgress({"converted": len(cells)}, quiet=quiet or as_json,
                              label=lambda c: f"{c['model']} {c['backend']} {c['precision']}")
    t0 = time.perf_counter()
    try:
        results, ray_meta = run_batch(cells, spec.output, existing=spec.existing, jobs=jobs, ray_address=ray_address,
                                      on_progress=progress)
    finally:
        progress.close()
    failed = sum(1 for c in results if c.get("status") == "failed")
    meta = {"matrix": str(matrix), "phi_quant_version": __version__, "cells": len(results), "failed": failed,
            "skipped": sum(1 for c in results if c.get("status") == "skipped"), "jobs": jobs,
            "wall_seconds": round(time.perf_counter() - t0, 1)}
    if ray_meta is not None:
        meta["ray"] = ray_meta
    spec.output.mkdir(parents=True, exist_ok=True)
    summary = spec.output / "batch.json"
    tmp = summary.with_name(".batch.json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "cells": results}, indent=2, default=str) + "\n")
    tmp.replace(summary)
    if as_json:
        emit_json({"meta": meta, "cells": results, "summary": str(summary)})
    else:
        click.echo(_table(results))
        click.echo("")
        click.echo(f"summary: {summary}")
    if failed:
        raise ExportFailedError(f"{failed} of {len(results)} conversions failed; see {summary}")
