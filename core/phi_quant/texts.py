"""Real English prose for measuring and calibrating models, read from files the machine already has.

Perplexity on a real model is only meaningful on real text, and a quantization recipe that
calibrates on the same text it is judged on would flatter itself. So there are two texts, made of
different files:

- :func:`evaluation_text` — the GNU GPL version 3 as Debian ships it
  (``/usr/share/common-licenses/GPL-3``, about 35 KB of legal English).
- :func:`calibration_text` — the Apache 2.0, Mozilla 2.0, Artistic, CC0 and BSD licenses from the
  same directory, joined by blank lines (none of the GPL family, so no shared boilerplate).

Nothing is copied into phi-quant. On a system without Debian's license directory both fall back to
license files that installed wheels carry (found through :mod:`importlib.metadata`): the largest
distinct one for evaluation, the next largest ones for calibration. Every number measured on a text
should carry :meth:`SourceText.record` (the files, their sha256 and the text's own sha256), because the
fallback depends on what is installed.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .errors import BadInputError

__all__ = ["SourceText", "evaluation_text", "calibration_text", "bundled_text", "text_from_file", "DEBIAN_LICENSES"]

#: Where Debian (and Ubuntu) keep the full texts of common licenses.
DEBIAN_LICENSES = Path("/usr/share/common-licenses")
_EVALUATION_FILES = ("GPL-3",)
_CALIBRATION_FILES = ("Apache-2.0", "MPL-2.0", "Artistic", "CC0-1.0", "BSD")
#: Calibration from wheels stops adding files once it holds this many characters.
_CALIBRATION_CHARS = 48_000
_LICENSE_PREFIXES = ("LICENSE", "LICENCE", "COPYING")


@dataclass(frozen=True)
class SourceText:
    """A text and where it came from: ``files`` are ``(path, sha256 of the file)`` in reading order."""

    name: str
    text: str
    files: tuple[tuple[str, str], ...]

    @property
    def sha256(self) -> str:
        """sha256 of the text itself (UTF-8), whatever files it was joined from."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def record(self) -> dict[str, Any]:
        """JSON-ready provenance, to store next to any number measured on this text."""
        return {"name": self.name, "sha256": self.sha256, "chars": len(self.text),
                "files": [{"path": p, "sha256": h} for p, h in self.files]}

    def __str__(self) -> str:
        return self.text


def _read(path: Path) -> tuple[str, str]:
    data = path.read_bytes()
    return data.decode("utf-8", errors="replace"), hashlib.sha256(data).hexdigest()


def _join(name: str, paths: Iterable[Path]) -> SourceText:
    parts, files = [], []
    for p in paths:
        text, digest = _read(p)
        parts.append(text.strip("\n"))
        files.append((str(p), digest))
    return SourceText(name, "\n\n".join(parts) + "\n", tuple(files))


def _debian(names: tuple[str, ...]) -> list[Path] | None:
    paths = [DEBIAN_LICENSES / n for n in names]
    return paths if all(p.is_file() for p in paths) else None


@functools.lru_cache(maxsize=1)
def _wheel_licenses() -> tuple[Path, ...]:
    """License files of installed distributions, one per distinct content, largest first (scanned once)."""
    found: dict[str, tuple[int, str, Path]] = {}
    for dist in metadata.distributions():
        for f in dist.files or ():
            if not f.name.upper().startswith(_LICENSE_PREFIXES):
                continue
            path = Path(str(dist.locate_file(f)))
            try:
                if not path.is_file():
                    continue
                _, digest = _read(path)
                size = path.stat().st_size
            except OSError:
                continue
            key = (size, str(path))
            if digest not in found or key < found[digest][:2]:
                found[digest] = (size, str(path), path)
    return tuple(p for _, _, p in sorted(found.values(), key=lambda e: (-e[0], e[1])))


def evaluation_text() -> SourceText:
    """The text perplexity is measured on (see the module docstring for where it comes from)."""
    paths = _debian(_EVALUATION_FILES)
    if paths is None:
        wheels = _wheel_licenses()
        if not wheels:
            raise BadInputError(f"no evaluation text: {DEBIAN_LICENSES} is missing and no installed package carries a "
                                "license file; pass your own text with --text FILE")
        paths = wheels[:1]
    return _join("evaluation", paths)


def calibration_text() -> SourceText:
    """A text for calibrating quantization recipes, never overlapping :func:`evaluation_text`'s files."""
    paths = _debian(_CALIBRATION_FILES)
    if paths is None:
        rest = _wheel_licenses()[1:]
        paths, chars = [], 0
        for p in rest:
            if chars >= _CALIBRATION_CHARS:
                break
            paths.append(p)
            chars += p.stat().st_size
        if not paths:
            raise BadInputError(f"no calibration text: {DEBIAN_LICENSES} is missing and installed packages carry "
                                "fewer than two distinct license files")
    return _join("calibration", paths)


def bundled_text() -> SourceText:
    """The short passage shipped in phi-quant (written for it): perplexity plumbing on the tiny models."""
    from importlib import resources

    with resources.as_file(resources.files("phi_quant").joinpath("data/eval_text.txt")) as path:
        return _join("bundled", [path])


def text_from_file(path: str | os.PathLike) -> SourceText:
    """A user's own text (``--text FILE``), with the same provenance record."""
    p = Path(path)
    try:
        return _join("user", [p])
    except OSError as e:
        raise BadInputError(f"cannot read the text file {p}: {e.strerror or e}") from e
