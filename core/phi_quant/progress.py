"""Progress sinks for ``export``: a tqdm bar on stderr in bytes, or nothing.

The bar is shown only when stderr is a terminal and the user did not ask for ``--json`` or
``--quiet``, so scripted runs and machine-readable output stay clean.
"""

from __future__ import annotations

import sys
from typing import Any

from .types import NullProgress, Progress

__all__ = ["TqdmProgress", "RecordingProgress", "make_progress", "NullProgress"]


class TqdmProgress:
    """A :class:`~phi_quant.types.Progress` drawing a byte-scaled tqdm bar on stderr."""

    def __init__(self, description: str = "", file: Any = None):
        self._bar = None
        self._description = description
        self._file = file or sys.stderr

    def start(self, total_bytes: int, description: str = "") -> None:
        from tqdm import tqdm

        self.finish()
        self._bar = tqdm(
            total=total_bytes or None,
            desc=description or self._description,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self._file,
            leave=True,
            dynamic_ncols=True,
        )

    def advance(self, nbytes: int, item: str = "") -> None:
        if self._bar is None:
            self.start(0)
        if item:
            self._bar.set_postfix_str(item[-40:], refresh=False)
        self._bar.update(nbytes)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class RecordingProgress:
    """Remembers every call (tests check that a backend streams and reports bytes)."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.items: list[str] = []
        self.finished = False

    def start(self, total_bytes: int, description: str = "") -> None:
        self.total = total_bytes

    def advance(self, nbytes: int, item: str = "") -> None:
        self.done += nbytes
        self.items.append(item)

    def finish(self) -> None:
        self.finished = True


def make_progress(*, quiet: bool = False, description: str = "", stream: Any = None) -> Progress:
    """A tqdm bar on an interactive stderr unless ``quiet``; otherwise a silent sink."""
    stream = stream or sys.stderr
    if quiet or not getattr(stream, "isatty", lambda: False)():
        return NullProgress()
    return TqdmProgress(description, file=stream)
