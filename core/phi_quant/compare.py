"""Run a backends × precisions matrix and collect each cell's size, fidelity and speed.

Each cell is two ``phi-quant`` subprocesses, ``quantize --json`` then ``eval --json``, so a cell
that crashes its vendor runtime (or runs out of memory) is reported in the table instead of taking
the run down, and the numbers are exactly what a user gets from the same commands. Conversions
run ``jobs`` at a time (they are independent and mostly I/O + kernel work); evaluations run one
at a time so that tokens/s are measured on an otherwise idle machine and compare fairly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .convert import sweep_partial
from .manifest import model_bytes
from .parent_watch import child_env

__all__ = ["CellSpec", "plan_cells", "run_matrix"]

#: Per-cell subprocess limit, so one hung runtime cannot stall the whole matrix.
CELL_TIMEOUT_S = 1800


@dataclass(frozen=True)
class CellSpec:
    """One cell of the matrix: a backend at a precision (with a recipe), with extra ``quantize`` arguments."""

    backend: str
    precision: str
    extra_args: tuple[str, ...] = field(default=())
    label: str = ""  # names a cell with extra_args, e.g. "Q4_K_M" or "asym-b128"; part of its key
    recipe: str | None = None  # None: the default (round to nearest)

    @property
    def key(self) -> str:
        parts = [self.backend, self.precision, re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label), self.recipe or ""]
        return "-".join(p for p in parts if p)


def plan_cells(
    offered: Mapping[str, Sequence[str]],
    backends: Iterable[str] | None = None,
    precisions: Iterable[str] | None = None,
    recipes: Iterable[str] | None = None,
    calibration_args: Sequence[str] = (),
) -> list[CellSpec]:
    """Cells for every selected backend × every selected precision that backend offers; with
    ``recipes``, integer precisions get one cell per recipe (float precisions have no values to choose);
    calibrated recipes' cells get ``calibration_args`` (one shared statistics file)."""
    chosen_b = list(backends) if backends else sorted(offered)
    chosen_p = list(precisions) if precisions else ["fp32", "fp16", "int8", "int4"]
    chosen_r = list(recipes) if recipes else [None]
    cells = []
    for b in chosen_b:
        for p in chosen_p:
            if p in offered.get(b, ()):
                for r in (chosen_r if p in ("int8", "int4") else [None]):
                    extra = tuple(calibration_args) if r is not None and _calibrated(r) else ()
                    cells.append(CellSpec(b, p, extra, recipe=r))
    return cells


def _calibrated(recipe: str) -> bool:
    from .quant.recipes import get_recipe
    from .quant.recipes.calibrated import is_calibrated

    return is_calibrated(get_recipe(recipe))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "phi_quant.cli", *args]


def _run_json(cmd: list[str], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """Run a phi-quant command with --json; return its parsed JSON (or None) and an error line.

    The child gets SIGTERM (so a conversion removes its partial output) when this call is
    interrupted or times out, and when this process dies (see :mod:`phi_quant.parent_watch`).
    """
    env = child_env(dict(os.environ, PYTHONUNBUFFERED="1"))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException as exc:
            _stop(proc)
            if isinstance(exc, subprocess.TimeoutExpired):
                return None, f"timed out after {timeout:.0f} s"
            raise
    if proc.returncode != 0:
        lines = [ln for ln in (stderr or stdout).strip().splitlines() if ln.strip()]
        if proc.returncode < 0:
            return None, _signal_message(-proc.returncode, lines)
        return None, (lines[-1] if lines else f"exit code {proc.returncode}")
    try:
        return json.loads(stdout), ""
    except json.JSONDecodeError:
        return None, "command printed no JSON"


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the child has not cleaned up and exited within ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _signal_message(signum: int, lines: list[str]) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    hint = " (out of memory?)" if signum == signal.SIGKILL else ""
    last = f": {lines[-1]}" if lines else ""
    return f"killed by {name}{hint}{last}"


def _convert(model: str, spec: CellSpec, out: Path, timeout: float) -> dict[str, Any]:
    cell: dict[str, Any] = {"backend": spec.backend, "precision": spec.precision, "output_dir": str(out),
                            "recipe": spec.recipe or "rtn"}
    if spec.label:
        cell["label"] = spec.label
    t0 = time.perf_counter()
    recipe_args = ("--recipe", spec.recipe) if spec.recipe else ()
    res, err = _run_json(
        _cli("quantize", model, "--backend", spec.backend, "--precision", spec.precision,
             "-o", str(out), "--force", "--json", *recipe_args, *spec.extra_args),
        timeout,
    )
    cell["convert_seconds"] = time.perf_counter() - t0
    if res is None:
        sweep_partial(out)  # what a conversion killed outright (OOM killer) could not remove itself
        cell.update(status="failed", error=f"quantize: {err}")
        return cell
    cell["scheme"] = res.get("scheme") or res.get("result", {}).get("scheme")
    if spec.recipe and spec.recipe != "rtn":
        cell["scheme"] = f"{cell['scheme']} ({spec.recipe})"
    cell["size_bytes"] = model_bytes(out)
    cell["status"] = "converted"
    return cell


#: What a cell keeps of ``eval --json`` (its fidelity, speed and memory sections, flattened).
_EVAL_KEYS = ("kl_mean", "kl_max", "top1_agreement", "cosine_mean", "max_abs_diff", "text_kl_mean", "text_kl_max",
              "text_top1_agreement", "text_positions", "perplexity", "reference_perplexity", "load_seconds",
              "prompt_tokens_per_s", "gen_tokens_per_s", "peak_rss_bytes")


def _evaluate(cell: dict[str, Any], model: str, text: str | None, timeout: float,
              eval_args: Sequence[str] = ()) -> None:
    args = ["eval", cell["output_dir"], "--reference", model, "--json", *eval_args]
    if text:
        args += ["--text", text]
    res, err = _run_json(_cli(*args), timeout)
    if res is None:
        cell.update(status="failed", error=f"eval: {err}")
        return
    flat = dict(res)
    for k in ("fidelity", "speed", "memory", "metrics"):
        if isinstance(res.get(k), dict):
            flat.update(res[k])
    for key in _EVAL_KEYS:
        if key in flat:
            cell[key] = flat[key]
    if "perplexity" in cell and "reference_perplexity" in cell:
        cell["ppl_delta"] = cell["perplexity"] - cell["reference_perplexity"]
    if isinstance(res.get("answers"), dict):
        a = res["answers"]
        cell["answers_agree"] = f"{a['agree']}/{a['of']}"
        cell["answers"] = a["items"]
    if isinstance(flat.get("text"), dict):
        cell["text"] = {k: flat["text"][k] for k in ("name", "sha256", "files", "tokens", "window") if k in flat["text"]}
    cell["status"] = "ok"


def run_matrix(
    model: str,
    cells: Sequence[CellSpec],
    workdir: Path,
    *,
    jobs: int = 2,
    keep: bool = False,
    text: str | None = None,
    on_progress: Callable[[str, dict[str, Any]], None] | None = None,
    timeout: float = CELL_TIMEOUT_S,
    eval_args: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Convert every cell (``jobs`` at a time), then evaluate them one by one; never raises for a cell.

    ``eval_args`` are extra ``phi-quant eval`` arguments for every cell (say ``--max-text-tokens 1024``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    note = on_progress or (lambda stage, cell: None)

    def convert_one(spec: CellSpec) -> dict[str, Any]:
        cell = _convert(model, spec, workdir / spec.key, timeout)
        note("converted", cell)
        return cell

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(convert_one, cells))
    for cell in results:
        if cell["status"] == "converted":
            _evaluate(cell, model, text, timeout, eval_args)
        note("evaluated", cell)
        if not keep:
            shutil.rmtree(cell["output_dir"], ignore_errors=True)
            cell["output_dir"] = None
    return results
