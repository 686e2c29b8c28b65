"""Convert a checkpoint with one backend into an output directory, atomically.

The backend writes into a fresh temporary directory created next to the destination (same
filesystem, so the final move is a rename). The manifest and model card are added there, and
only then is the directory renamed into place. Any exception, Ctrl-C included, removes the
temporary directory: the destination either does not change or holds a complete output.
With ``force``, an existing destination is renamed aside first and deleted after the new one is
in place, so a failure never destroys the previous output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .builtin import TINY_PREFIX
from .errors import BadInputError, OutputExistsError, UnsupportedModelError, UnsupportedPrecisionError
from .manifest import OWN_FILES, _jsonable, build_manifest, model_bytes, source_record, write_manifest
from .model_card import render_model_card
from .plugins import Backend, get_manager
from .types import PRECISIONS, ExportOptions, ExportResult, NullProgress, Progress

__all__ = ["TINY_PREFIX", "ConvertResult", "resolve_model", "check_options", "check_architecture", "convert",
           "sweep_partial"]


@dataclass
class ConvertResult:
    """What :func:`convert` produced."""

    output: Path
    backend: str
    precision: str
    scheme: str
    files: list[str]
    output_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "backend": self.backend,
            "precision": self.precision,
            "scheme": self.scheme,
            "files": self.files,
            "output_bytes": self.output_bytes,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            "manifest": self.manifest,
        }


def resolve_model(model: str | Path) -> str | Path:
    """Turn a built-in name (``tiny:<variant>``, ``real:<name>``) into its cached checkpoint's path; anything else unchanged."""
    from .builtin import resolve

    return resolve(model)


def open_source(model: str | Path) -> Any:
    """Open a checkpoint (local dir, hub id or a built-in name such as ``tiny:phi4-mini``) as a ModelSource."""
    from .model.source import open_model

    return open_model(resolve_model(model))


def check_options(backend: Backend, options: ExportOptions) -> None:
    """Refuse a precision or scheme the backend does not offer, before any work is done."""
    if options.precision not in PRECISIONS:
        raise UnsupportedPrecisionError(
            f"unknown precision {options.precision!r}; phi-quant knows: {', '.join(PRECISIONS)}"
        )
    spec = backend.precision(options.precision)
    if options.scheme and spec.schemes and options.scheme not in (spec.scheme, *spec.schemes):
        raise UnsupportedPrecisionError(
            f"backend {backend.name!r} has no scheme {options.scheme!r} for {options.precision}; "
            f"choose one of: {', '.join((spec.scheme, *spec.schemes))}"
        )
    if options.group_size is not None and options.group_size <= 0:
        raise BadInputError(f"--group-size must be positive, got {options.group_size}")
    from .quant.budget import check_budget_options
    from .quant.recipes import get_recipe

    get_recipe(options.recipe)  # an unknown name is refused with the list of recipes
    check_budget_options(options)
    from .calib import check_calibration_options

    check_calibration_options(options)


def check_architecture(backend: Backend, config: Any) -> None:
    """Refuse a checkpoint whose architecture the backend does not declare, naming those that do."""
    arch = config.arch_name
    if backend.info.writes(arch):
        return
    others = [b.name for b in get_manager().backends() if b.info.writes(arch)]
    hint = f"; backends that write it: {', '.join(others)}" if others else ""
    raise UnsupportedModelError(
        f"backend {backend.name!r} does not write architecture {arch} ({config.architecture}); "
        f"it writes: {', '.join(backend.info.architectures)}{hint}"
    )


def _check_destination(output: Path, force: bool) -> None:
    if output.exists() or output.is_symlink():
        if not force:
            raise OutputExistsError(f"{output} already exists; choose another -o or pass --force to replace it")
        if not output.is_dir():
            raise OutputExistsError(f"{output} exists and is not a directory; remove it or choose another -o")


def _move_into_place(tmp: Path, output: Path, force: bool) -> None:
    """Rename ``tmp`` to ``output``; with ``force`` the old output is moved aside, then deleted."""
    aside = None
    if output.exists():
        if not force:
            raise OutputExistsError(f"{output} appeared while converting; pass --force to replace it")
        aside = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
        aside.rmdir()
        os.rename(output, aside)
    try:
        os.rename(tmp, output)
    except OSError as exc:
        if aside is not None:
            os.rename(aside, output)
        raise OutputExistsError(f"could not move the result to {output}: {exc}") from exc
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def convert(
    model: str | Path,
    backend: str,
    options: ExportOptions,
    output: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> ConvertResult:
    """Export ``model`` with ``backend`` at ``options.precision`` into ``output`` (see module doc)."""
    t0 = time.perf_counter()
    be = get_manager().get(backend)
    check_options(be, options)
    output = Path(output).expanduser().absolute()
    _check_destination(output, force)
    progress = progress or NullProgress()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_partial_prefix(output), dir=output.parent))
    try:
        with open_source(model) as source:
            check_architecture(be, source.config)
            t_open = time.perf_counter()
            from .calib import calibrated_source

            stream = calibrated_source(source, be, options, progress)  # the source itself unless the recipe calibrates
            t_calibrate = time.perf_counter()
            progress.start(int(getattr(stream, "total_bytes", 0) or 0), f"{be.name} {options.precision}")
            try:
                result: ExportResult = be.export(stream, tmp, options, progress)
            finally:
                progress.finish()
            t_export = time.perf_counter()
            missing = [f for f in result.files if not (tmp / f).exists()]
            if missing:
                from .errors import PluginError

                raise PluginError(be.name, f"export listed files it did not write: {', '.join(missing[:5])}")
            record = source_record(str(model), source)
        timings = {"open_s": t_open - t0, "export_s": t_export - t_calibrate, "total_s": time.perf_counter() - t0}
        if stream is not source:
            timings["calibrate_s"] = t_calibrate - t_open
        manifest = build_manifest(source=record, backend_info=be.info, options=options, result=result, timings=timings)
        if stream is not source:
            manifest["calibration"] = _jsonable(stream.calibration_record)
        manifest["output_bytes"] = model_bytes(tmp)
        write_manifest(tmp, manifest)
        (tmp / "README.md").write_text(
            render_model_card(manifest, result.run_instructions, output_name=output.name), encoding="utf-8"
        )
        _move_into_place(tmp, output, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConvertResult(
        output=output,
        backend=be.name,
        precision=options.precision,
        scheme=result.scheme,
        files=sorted(set(result.files) | set(OWN_FILES)),
        output_bytes=model_bytes(output),
        seconds=time.perf_counter() - t0,
        notes=list(result.notes),
        manifest=manifest,
    )


def _partial_prefix(output: Path) -> str:
    return f".{output.name}.partial-"


def sweep_partial(output: str | Path) -> list[Path]:
    """Remove the temporary directories a *killed* conversion into ``output`` left next to it.

    A conversion that fails or is interrupted removes its own; one killed outright (SIGKILL, the
    OOM killer) cannot. ``compare`` and ``batch`` call this for their failed cells.
    """
    output = Path(output).expanduser().absolute()
    gone = []
    for tmp in output.parent.glob(_partial_prefix(output) + "*"):
        shutil.rmtree(tmp, ignore_errors=True)
        gone.append(tmp)
    return gone
