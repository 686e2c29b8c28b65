"""``phi-quant batch MATRIX.yaml``: many conversions (models × backends × precisions), no evaluation.

The matrix file is small YAML (see :data:`EXAMPLE` and docs/cli.md); :func:`load_matrix`
validates all of it before anything runs, with one-line errors that name the key. Each cell is
the same ``phi-quant quantize`` subprocess ``compare`` runs, here (``jobs`` at a time) or as a
Ray task (:mod:`phi_quant.cluster`); a failed cell is reported and the others go on.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import compare
from .compare import CELL_TIMEOUT_S, CellSpec
from .errors import BadInputError
from .types import PRECISIONS

__all__ = ["EXAMPLE", "EXISTING", "Matrix", "BatchCell", "load_matrix", "parse_matrix", "plan_batch",
           "run_batch", "model_folder"]

EXAMPLE = """\
output: zoo                       # required; relative to this file. With --ray: a directory every node mounts
models:                           # required: what `phi-quant quantize` accepts (paths relative to this file)
  - tiny:phi3-mini
  - microsoft/Phi-4-mini-instruct
backends: [llamacpp, onnx, mlx]   # required
precisions: [int4, int8]          # required
existing: fail                    # optional: fail (default), skip or replace an output that exists
options:                          # optional: quantize flags for a backend, or for one backend-precision cell
  llamacpp-int4: {scheme: Q4_K_M}
  mlx: {option: {dtype: float16}}
"""

#: What to do with an output that already exists.
EXISTING = ("fail", "skip", "replace")

_KEYS = ("output", "models", "backends", "precisions", "existing", "options")
_REQUIRED = ("output", "models", "backends", "precisions")

#: Per-cell options: matrix key -> (quantize flag, expected type).
_OPTIONS: dict[str, tuple[str, type]] = {
    "scheme": ("--scheme", str),
    "group-size": ("--group-size", int),
    "symmetric": ("--symmetric", bool),
    "context-length": ("--context-length", int),
    "target": ("--target", str),
    "threads": ("--threads", int),
    "option": ("--option", dict),
}


@dataclass(frozen=True)
class Matrix:
    """A validated matrix file."""

    path: Path
    output: Path
    models: tuple[str, ...]
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    existing: str = "fail"
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)  # backend or cell key -> quantize args


@dataclass(frozen=True)
class BatchCell:
    """One conversion of the batch: ``spec`` of ``model`` into ``output``."""

    model: str
    spec: CellSpec
    output: Path

    def record(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.spec.backend, "precision": self.spec.precision,
                "output_dir": str(self.output)}


def _bad(path: Path, where: str, what: str) -> BadInputError:
    return BadInputError(f"{path}: {where} {what}")


def _names(path: Path, raw: dict[str, Any], key: str) -> tuple[str, ...]:
    value = raw[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise _bad(path, key, f"must be a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise _bad(path, key, f"lists a name twice: {value!r}")
    return tuple(v.strip() for v in value)


def _quantize_args(path: Path, where: str, opts: Any) -> tuple[str, ...]:
    if not isinstance(opts, dict):
        raise _bad(path, where, f"must be a mapping of quantize options, got {opts!r}")
    args: list[str] = []
    for key, value in opts.items():
        if key not in _OPTIONS:
            raise _bad(path, f"{where}.{key}", f"is not a quantize option; use one of: {', '.join(_OPTIONS)}")
        flag, kind = _OPTIONS[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise _bad(path, f"{where}.{key}", f"must be a positive whole number, got {value!r}")
        if kind is bool and not isinstance(value, bool):
            raise _bad(path, f"{where}.{key}", f"must be true or false, got {value!r}")
        if kind is str and (not isinstance(value, str) or not value.strip()):
            raise _bad(path, f"{where}.{key}", f"must be a non-empty string, got {value!r}")
        if kind is dict and not isinstance(value, dict):
            raise _bad(path, f"{where}.{key}", f"must be a mapping of backend options (KEY: VALUE), got {value!r}")
        if kind is bool:
            args.append(flag if value else "--asymmetric")
        elif kind is dict:
            for k, v in value.items():
                text = str(v).lower() if isinstance(v, bool) else str(v)
                args += [flag, f"{k}={text}"]
        else:
            args += [flag, str(value)]
    return tuple(args)


def parse_matrix(raw: Any, path: Path) -> Matrix:
    """Validate a loaded matrix document (see :data:`EXAMPLE`)."""
    if not isinstance(raw, dict):
        raise BadInputError(f"{path}: a matrix file is a YAML mapping with keys {', '.join(_REQUIRED)}")
    unknown = [k for k in raw if k not in _KEYS]
    if unknown:
        raise _bad(path, f"key {unknown[0]!r}", f"is unknown; the keys are: {', '.join(_KEYS)}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise _bad(path, f"key {missing[0]!r}", "is missing (see `phi-quant batch --example`)")
    output = raw["output"]
    if not isinstance(output, str) or not output.strip():
        raise _bad(path, "output", f"must be a directory, got {output!r}")
    models, backends, precisions = (_names(path, raw, k) for k in ("models", "backends", "precisions"))
    for p in precisions:
        if p not in PRECISIONS:
            raise _bad(path, "precisions", f"has {p!r}; phi-quant knows: {', '.join(PRECISIONS)}")
    existing = raw.get("existing", "fail")
    if existing not in EXISTING:
        raise _bad(path, "existing", f"must be one of {', '.join(EXISTING)}, got {existing!r}")
    raw_options = raw.get("options") or {}
    if not isinstance(raw_options, dict):
        raise _bad(path, "options", f"must be a mapping from a backend (or backend-precision) to options, got {raw_options!r}")
    cell_keys = {f"{b}-{p}" for b in backends for p in precisions}
    options = {}
    for target, opts in raw_options.items():
        if target not in backends and target not in cell_keys:
            raise _bad(path, f"options.{target}", "names no backend or backend-precision cell of this matrix")
        options[target] = _quantize_args(path, f"options.{target}", opts)
    from .cluster import check_shared_dir  # the same refusal of object-store URIs as `compare --ray`

    try:
        check_shared_dir(output)
    except BadInputError as exc:
        raise _bad(path, "output", str(exc)) from None
    out = (path.parent / Path(output).expanduser()).absolute()  # every node (and worker's cwd) must find it
    models = tuple(_beside(path, m) for m in models)
    folders = [model_folder(m) for m in models]
    for m, f in zip(models, folders):
        if folders.count(f) > 1:
            raise _bad(path, "models", f"{m!r} and another model would share the output folder {f!r}")
    return Matrix(path, out, models, backends, precisions, existing, options)


def _beside(matrix: Path, model: str) -> str:
    """A model path relative to the matrix file, made absolute; hub ids and ``tiny:`` names unchanged."""
    near = matrix.parent / Path(model).expanduser()
    return str(near.absolute()) if not Path(model).is_absolute() and near.exists() else model


def load_matrix(path: Path) -> Matrix:
    """Read and validate MATRIX.yaml; every problem is a one-line :class:`BadInputError`."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInputError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_matrix(raw, Path(path))


def model_folder(model: str) -> str:
    """A model's folder under the output: ``tiny:phi3-mini`` -> ``tiny-phi3-mini``,
    ``microsoft/Phi-4-mini`` -> ``microsoft--Phi-4-mini``, ``./ckpt/Phi-4`` -> ``Phi-4``."""
    path = Path(model).expanduser()
    if path.exists():
        name = path.absolute().name
    else:
        name = model.replace("/", "--").replace(":", "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def plan_batch(matrix: Matrix, offered: dict[str, Sequence[str]]) -> tuple[list[BatchCell], list[str]]:
    """Every model × backend × precision the backend offers; returns the cells and notes on what was left out."""
    cells, notes = [], []
    for backend in matrix.backends:
        left_out = [p for p in matrix.precisions if p not in offered.get(backend, ())]
        if left_out:
            notes.append(f"{backend} does not offer {', '.join(left_out)}: left out")
    for model in matrix.models:
        for backend in matrix.backends:
            for precision in matrix.precisions:
                if precision not in offered.get(backend, ()):
                    continue
                key = f"{backend}-{precision}"
                extra = matrix.options.get(backend, ()) + matrix.options.get(key, ())
                cells.append(BatchCell(model, CellSpec(backend, precision, extra),
                                       matrix.output / model_folder(model) / key))
    return cells, notes


def _existing(cell: BatchCell, policy: str) -> dict[str, Any] | None:
    """The cell's result when its output exists and the policy settles it, else None (convert it)."""
    if not (cell.output.exists() or cell.output.is_symlink()) or policy == "replace":
        return None
    if policy == "skip":
        return dict(cell.record(), status="skipped", error="output exists (existing: skip)")
    return dict(cell.record(), status="failed",
                error="quantize: the output exists; set `existing: replace` or `existing: skip` in the matrix")


def _finished(cell: BatchCell, result: dict[str, Any]) -> dict[str, Any]:
    """The cell's record: its model first, and ``ok`` for a conversion that finished."""
    out = dict(cell.record(), **{k: v for k, v in result.items() if k not in ("backend", "precision")})
    if out.get("status") == "converted":
        out["status"] = "ok"
    return out


def run_batch(
    cells: Sequence[BatchCell],
    output: Path,
    *,
    existing: str = "fail",
    jobs: int = 2,
    ray_address: str | None = None,
    on_progress: Callable[[str, dict[str, Any]], None] | None = None,
    timeout: float = CELL_TIMEOUT_S,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Convert every cell into ``output`` (here, or on Ray with ``ray_address``); never raises for a cell.

    Returns the records in ``cells`` order and, on Ray, the cluster description for the summary.
    """
    note = on_progress or (lambda stage, cell: None)
    results: list[dict[str, Any] | None] = [None] * len(cells)
    todo = []
    for i, cell in enumerate(cells):
        settled = _existing(cell, existing)
        if settled is None:
            todo.append(i)
        else:
            results[i] = settled
            note("converted", settled)
    ray_meta = None
    if ray_address is not None and todo:
        from . import cluster

        share = cluster.check_shared_dir(output)
        plan = cluster.connect(ray_address)
        try:
            ray_cells = [cluster.RayCell(cluster.portable_model(cells[i].model), cells[i].spec, cells[i].output)
                         for i in todo]
            by_output = {cells[i].output: cells[i] for i in todo}
            done = cluster.run_cells(ray_cells, plan, share, jobs=jobs, evaluate=False, keep=True, on_progress=note,
                                     timeout=timeout, record=lambda rc, r: _finished(by_output[rc.output], r))
        finally:
            cluster.disconnect()
        for i, result in zip(todo, done):
            results[i] = result
        ray_meta = plan.as_meta(evaluation=False)
    elif todo:
        def convert_one(i: int) -> None:
            cell = cells[i]
            cell.output.parent.mkdir(parents=True, exist_ok=True)
            results[i] = _finished(cell, compare._convert(cell.model, cell.spec, cell.output, timeout))
            note("converted", results[i])

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(convert_one, todo))
    return [r for r in results if r is not None], ray_meta
