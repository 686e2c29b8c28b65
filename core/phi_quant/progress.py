"""Progress sinks: a tqdm bar on stderr in bytes for ``export``, one bar for a matrix of cells.

Bars are shown only when stderr is a terminal and the user did not ask for ``--json`` or
``--quiet``, so scripted runs and machine-readable output stay clean.
"""

from __future__ import annotations

import sys
from typing import Any

from .types import NullProgress, Progress

__all__ = ["TqdmProgress", "RecordingProgress", "make_progress", "NullProgress", "MatrixProgress"]


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


class MatrixProgress:
    """``compare``/``batch``: one bar over every cell's steps, and one status line per finished step.

    ``steps`` maps each stage name ("converted", "evaluated") to how many cells go through it.
    Lines look like ``[converted 2/4] onnx int4: converted`` (or ``failed: <error>``); they go
    above the bar on a terminal, plainly to stderr otherwise, and nowhere when ``quiet``.
    """

    def __init__(self, steps: dict[str, int], *, quiet: bool = False, stream: Any = None,
                 label: Any = None):
        self._steps = dict(steps)
        self._done = {stage: 0 for stage in steps}
        self._quiet = quiet
        self._stream = stream or sys.stderr
        self._label = label or (lambda cell: f"{cell['backend']} {cell['precision']}")
        self._bar = None
        if not quiet and getattr(self._stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=sum(steps.values()), desc="cells", unit="step", file=self._stream,
                             leave=True, dynamic_ncols=True)

    def __call__(self, stage: str, cell: dict[str, Any]) -> None:
        self._done[stage] = self._done.get(stage, 0) + 1
        if self._quiet:
            return
        mark = "failed: " + cell.get("error", "") if cell.get("status") == "failed" else stage
        line = f"[{stage} {self._done[stage]}/{self._steps.get(stage, '?')}] {self._label(cell)}: {mark}"
        if self._bar is not None:
            self._bar.write(line, file=self._stream)
            self._bar.update(1)
        else:
            print(line, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
