"""Convert a checkpoint with one backend into an output directory, atomically.

Every option and the checkpoint are checked before anything is created on disk; the output
location must not be (inside) the source or the Hub cache (:mod:`phi_quant.output_dir`). The
backend writes into a fresh temporary directory created next to the destination (same
filesystem, so the final move is a rename). The model card and then the manifest (with the size
and sha256 of every file, for ``phi-quant verify``) are added there, and only then is the
directory renamed into place. Any exception, Ctrl-C included, removes the temporary directory and
the parent directories created for it: the destination either does not change or holds a
complete output. With ``force``, an existing destination is renamed aside first and deleted
after the new one is in place, so a failure never destroys the previous output.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .builtin import TINY_PREFIX
from .errors import PluginError, UnsupportedModelError, os_error
from .manifest import MANIFEST_NAME, OWN_FILES, _jsonable, build_manifest, manifest_text, model_bytes, source_record
from .model.checkpoint_files import checkpoint_roots
from .model_card import render_model_card
from .options import check_options, check_options_for_model
from .output_dir import OutputStaging, check_destination, check_location, partial_prefix
from .plugins import Backend, get_manager
from .types import ExportOptions, ExportResult, NullProgress, Progress
from .verify import OUTPUTS_KEY, record_outputs

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
    options = check_options(be, options)
    output = Path(output).expanduser().absolute()
    check_destination(output, force)
    progress = progress or NullProgress()
    with open_source(model) as source:  # validated from headers before anything is created on disk
        check_architecture(be, source.config)
        options = check_options_for_model(be, options, source.config)
        check_location(output, checkpoint_roots(Path(source.path)))
        staging = OutputStaging(output, force)
        with staging as tmp:
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
                raise PluginError(be.name, f"export listed files it did not write: {', '.join(missing[:5])}")
            record = source_record(str(model), source)
            timings = {"open_s": t_open - t0, "export_s": t_export - t_calibrate, "total_s": time.perf_counter() - t0}
            if stream is not source:
                timings["calibrate_s"] = t_calibrate - t_open
            manifest = build_manifest(source=record, backend_info=be.info, options=options, result=result,
                                      timings=timings)
            if stream is not source:
                manifest["calibration"] = _jsonable(stream.calibration_record)
            manifest["output_bytes"] = model_bytes(tmp)
            _write_own_file(tmp / "README.md", render_model_card(manifest, result.run_instructions,
                                                                 output_name=output.name))
            manifest[OUTPUTS_KEY] = record_outputs(tmp)
            _write_own_file(tmp / MANIFEST_NAME, manifest_text(manifest))  # written last: marks a complete output
            staging.commit()
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


def _write_own_file(path: Path, text: str) -> None:
    """Write the manifest or the model card; a full disk or a limit becomes one clear error."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise os_error(exc, f"writing {path.name} of the output") from exc


def sweep_partial(output: str | Path) -> list[Path]:
    """Remove the temporary directories a *killed* conversion into ``output`` left next to it.

    A conversion that fails or is interrupted removes its own; one killed outright (SIGKILL, the
    OOM killer) cannot. ``compare`` and ``batch`` call this for their failed cells.
    """
    output = Path(output).expanduser().absolute()
    gone = []
    for tmp in output.parent.glob(partial_prefix(output) + "*"):
        shutil.rmtree(tmp, ignore_errors=True)
        gone.append(tmp)
    return gone
