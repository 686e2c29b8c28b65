"""``phi-quant compare MODEL``: a backends × precisions matrix, as a table, JSON and a picture."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import click

from .. import __version__
from ..compare import plan_cells, run_matrix
from ..errors import BadInputError, PhiQuantError
from ..plugins import get_manager
from ..progress import MatrixProgress
from ..report import markdown_table, text_record, write_report
from ._common import calibration_options, emit_json, json_option, recipe_option

__all__ = ["command"]


def _label(cell: dict) -> str:
    recipe = cell.get("recipe") or "rtn"
    return f"{cell['backend']} {cell['precision']}" + ("" if recipe == "rtn" else f" {recipe}")


@click.command("compare")
@click.argument("model")
@click.option("-o", "--output", "report_dir", type=click.Path(path_type=Path), default=Path("phi-quant-report"),
              show_default=True, help="Folder for report.json, report.md, report.png and report.html.")
@click.option("--backend", "backends", multiple=True, help="Backend to include (repeatable; default: all installed).")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "bf16", "int8", "int4"]),
              help="Precision to include (repeatable; default: fp32 fp16 int8 int4).")
@recipe_option("--recipe", "recipes", multiple=True,
               help="Recipe for the int8/int4 cells (repeatable: one cell per recipe; default: rtn). Calibrated "
                    "recipes (awq, gptq, awq+gptq, ...) share one calibration, kept in OUTPUT/calibration.safetensors "
                    "unless --calibration-cache says where.")
@calibration_options
@click.option("--jobs", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Conversions run at once; evaluations always run one at a time so tokens/s compare fairly.")
@click.option("--keep", is_flag=True, help="Keep each cell's exported model under OUTPUT/models/.")
@click.option("--text", "text_file", type=click.Path(exists=True, dir_okay=False), help="Text file for perplexity.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
              help="Run the cells as Ray tasks on a cluster: auto (RAY_ADDRESS or `ray start` here), local, "
                   "HOST:PORT or ray://HOST:PORT. Needs phi-quant[ray].")
@click.option("--shared-dir", metavar="DIR",  # a str: a Path would turn s3://b into the folder s3:/b
              help="With --ray: a directory every node mounts at the same path, for the exports (default: OUTPUT).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or per-cell lines.")
@json_option
def command(model, report_dir, backends, precisions, recipes, calibration, calibration_tokens, calibration_cache, jobs,
            keep, text_file, ray_address, shared_dir, quiet, as_json) -> None:
    """Convert MODEL with every installed backend at every precision, evaluate each against the
    fp32 oracle, and write a report with size, KL, top-1, perplexity and tokens/s side by side."""
    if shared_dir is not None and ray_address is None:
        raise BadInputError("--shared-dir applies only with --ray (a local run keeps its exports on this machine)")
    mgr = get_manager()
    offered: dict[str, list[str]] = {}
    for b in mgr.backends():
        if backends and b.name not in backends:
            continue
        try:
            offered[b.name] = [p.precision for p in b.precisions()]
        except PhiQuantError as exc:
            click.echo(f"skipping backend {b.name}: {exc}", err=True)
    missing = [b for b in backends if b not in offered]
    if missing:
        for name in missing:
            mgr.get(name)  # raises BackendNotInstalledError with the package to install
    calib_args = _calibration_args(recipes, calibration, calibration_tokens, calibration_cache, report_dir)
    cells = plan_cells(offered, backends or None, precisions or None, list(recipes) or None, calib_args)
    if not cells:
        raise BadInputError("nothing to compare: no installed backend offers the selected precisions "
                            "(see `phi-quant plugins`)")
    total = len(cells)
    progress = MatrixProgress({"converted": total, "evaluated": total}, quiet=quiet or as_json, label=_label)
    t0 = time.perf_counter()
    load_before = _load_average()
    ray_meta = None
    try:
        if ray_address is not None:
            from ..cluster import compare_on_ray

            results, ray_meta = compare_on_ray(model, cells, ray_address, shared_dir or str(report_dir), jobs=jobs,
                                               keep=keep, text=text_file, on_progress=progress)
        else:
            results = _run_here(model, cells, report_dir, jobs=jobs, keep=keep, text=text_file, on_progress=progress)
    finally:
        progress.close()
    meta = {
        "model": model,
        "phi_quant_version": __version__,
        "cells": total,
        "failed": sum(1 for c in results if c.get("status") != "ok"),
        "jobs": jobs,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        # tokens/s mean little without it: the machine may be shared
        "load_average": f"{load_before} before, {_load_average()} after",
    }
    text = text_record(results)
    if text:
        meta["text"] = text
    if ray_meta is not None:
        meta["ray"] = ray_meta
    written = write_report(report_dir, results, meta)
    if as_json:
        emit_json({"meta": meta, "cells": results, "files": {k: str(v) for k, v in written.items()}})
        return
    click.echo(markdown_table(results))
    click.echo("")
    click.echo("report: " + ", ".join(str(p) for p in written.values()))


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not every platform has one
        return "?"


def _calibration_args(recipes, calibration, tokens, cache, report_dir: Path) -> tuple[str, ...]:
    """``quantize`` arguments for the calibrated cells: one statistics file for all of them."""
    from ..quant.recipes import get_recipe
    from ..quant.recipes.calibrated import is_calibrated

    if not any(is_calibrated(get_recipe(r)) for r in recipes):
        if calibration or tokens or cache:
            raise BadInputError("--calibration, --calibration-tokens and --calibration-cache need a calibrated "
                                "--recipe (awq, gptq, awq+gptq, ...)")
        return ()
    cache = Path(cache) if cache else report_dir / "calibration.safetensors"
    cache.parent.mkdir(parents=True, exist_ok=True)
    args = ["--calibration-cache", str(cache.absolute())]
    if calibration:
        from ..calib.synthetic import is_synthetic  # here: importing phi_quant.calib costs every command start-up
        args += ["--calibration", calibration if is_synthetic(calibration) else str(Path(calibration).absolute())]
    if tokens:
        args += ["--calibration-tokens", str(tokens)]
    return tuple(args)


def _run_here(model, cells, report_dir: Path, *, jobs: int, keep: bool, text, on_progress) -> list[dict]:
    """The local run: exports under OUTPUT/models with --keep, else in a temporary directory."""
    work = report_dir / "models" if keep else Path(tempfile.mkdtemp(prefix="phi-quant-compare-"))
    try:
        return run_matrix(model, cells, work, jobs=jobs, keep=keep, text=text, on_progress=on_progress)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
