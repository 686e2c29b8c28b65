"""Build-once directories: a checkpoint is written privately, then renamed into place.

Both the tiny test checkpoints and the built-in real model are derived data: expensive enough to
keep, cheap enough to rebuild, and shared by concurrent processes (pytest workers, ``compare``'s
subprocesses). :func:`build_once` gives every reader either nothing or a complete directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["build_once", "user_cache_dir"]


def user_cache_dir() -> Path:
    """phi-quant's cache: ``$PHI_QUANT_CACHE``, else ``$XDG_CACHE_HOME/phi-quant``, else ``~/.cache/phi-quant``."""
    explicit = os.environ.get("PHI_QUANT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "phi-quant"


def build_once(root: Path, name: str, build: Callable[[Path], Any], *, marker: str = "config.json") -> Path:
    """The directory ``root / name``, written by ``build(directory)`` on first use.

    ``build`` fills a private temporary directory that is then renamed into place, so concurrent
    processes never see a half-written directory; the loser of a race discards its copy. A
    directory counts as built once it holds ``marker``.
    """
    target = Path(root) / name
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
