"""What an output directory holds, recorded at conversion and checked later.

``convert`` records the size and sha256 of every file it wrote under the manifest's ``outputs``
key. ``phi-quant verify OUT`` compares the directory with that record and names each missing,
changed or unexpected file; ``eval`` runs the full check (hashes) before measuring, ``run`` the
cheap one (sizes) before loading, so an output overwritten in place is never silently trusted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import BadInputError, DamagedOutputError
from .manifest import MANIFEST_NAME, file_sha256, read_manifest

__all__ = ["OUTPUTS_KEY", "Problem", "record_outputs", "find_problems", "verify_output", "damage_message",
           "require_intact"]

OUTPUTS_KEY = "outputs"


@dataclass(frozen=True)
class Problem:
    """One way the directory differs from its record."""

    file: str  # path relative to the output directory
    kind: str  # "missing" | "size" | "hash" | "extra"
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(directory).as_posix() != MANIFEST_NAME)


def record_outputs(directory: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``directory`` but the manifest."""
    directory = Path(directory)
    return {rel: {"bytes": (directory / rel).stat().st_size, "sha256": file_sha256(directory / rel)}
            for rel in _files(directory)}


def find_problems(directory: Path, recorded: dict[str, dict[str, Any]], *, full: bool = True,
                  extras: bool = True) -> list[Problem]:
    """Differences between ``directory`` and ``recorded``; ``full`` compares hashes, else sizes only."""
    directory = Path(directory)
    problems = []
    for rel, entry in sorted(recorded.items()):
        path = directory / rel
        if not path.is_file():
            problems.append(Problem(rel, "missing", f"{rel} is missing"))
            continue
        size = path.stat().st_size
        if size != entry.get("bytes"):
            problems.append(Problem(rel, "size", f"{rel} has {size} bytes, {MANIFEST_NAME} recorded {entry.get('bytes')}"))
        elif full and file_sha256(path) != entry.get("sha256"):
            problems.append(Problem(rel, "hash", f"{rel} was modified (its sha256 differs from {MANIFEST_NAME}'s)"))
    if extras:
        problems += [Problem(rel, "extra", f"{rel} was not written by phi-quant")
                     for rel in _files(directory) if rel not in recorded]
    return problems


def _recorded(directory: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    outputs = manifest.get(OUTPUTS_KEY)
    if outputs is None:
        return None
    if not isinstance(outputs, dict) or not all(isinstance(v, dict) for v in outputs.values()):
        raise BadInputError(f"{Path(directory) / MANIFEST_NAME} has a malformed {OUTPUTS_KEY!r} record; "
                            "re-run 'phi-quant quantize' with --force")
    return outputs


def verify_output(directory: Path, *, full: bool = True) -> dict[str, Any]:
    """The report of ``phi-quant verify``: files checked, bytes, and every problem found."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    recorded = _recorded(directory, manifest)
    if recorded is None:
        raise BadInputError(
            f"{directory / MANIFEST_NAME} records no file sizes or hashes (it was written by an older phi-quant); "
            "re-run 'phi-quant quantize' with --force to get an output that can be verified"
        )
    problems = find_problems(directory, recorded, full=full)
    return {
        "output": str(directory),
        "checked": "sha256" if full else "sizes",
        "files": len(recorded),
        "bytes": sum(int(e.get("bytes") or 0) for e in recorded.values()),
        "ok": not problems,
        "problems": [p.as_dict() for p in problems],
    }


def damage_message(directory: Path, problems: list[Problem]) -> str:
    first = problems[0].detail
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return (f"{directory} is damaged: {first}{more}. Restore the file or re-create the output with "
            "'phi-quant quantize ... --force'")


def require_intact(directory: Path, manifest: dict[str, Any], *, full: bool) -> None:
    """Raise :class:`DamagedOutputError` naming the first problem; outputs of older versions pass unchecked."""
    recorded = _recorded(directory, manifest)
    if recorded is None:
        return
    problems = find_problems(directory, recorded, full=full, extras=False)
    if problems:
        raise DamagedOutputError(damage_message(Path(directory), problems))
