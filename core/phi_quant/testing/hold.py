"""A test seam: make one ``quantize`` stop in the middle of its export until a test lets it go.

Tests of what a killed cell leaves behind need a conversion that is reliably *mid-way*: its
``.NAME.partial-*`` directory exists and holds some tensors, and it is not finished. With
:data:`HOLD_DIR_ENV` set to a directory, ``phi-quant quantize -o OUT`` checks after each tensor
for ``<dir>/<OUT's name>.hold``; while that file exists it writes ``<dir>/<OUT's name>.held``
(JSON: its pid, its parent's pid, the output path) and waits. Without the variable nothing is
imported or checked. Nothing in phi-quant sets the variable: only tests do.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["HOLD_DIR_ENV", "HoldingProgress", "maybe_hold"]

HOLD_DIR_ENV = "PHI_QUANT_TEST_HOLD_DIR"


class HoldingProgress:
    """Wraps a Progress; after each ``advance`` waits while ``<dir>/<name>.hold`` exists."""

    def __init__(self, inner: Any, hold_dir: Path, output: Path):
        self._inner = inner
        self._hold = hold_dir / f"{output.name}.hold"
        self._held = hold_dir / f"{output.name}.held"
        self._output = output

    def start(self, total_bytes: int, description: str = "") -> None:
        self._inner.start(total_bytes, description)

    def advance(self, nbytes: int, item: str = "") -> None:
        self._inner.advance(nbytes, item)
        if not self._hold.exists():
            return
        tmp = self._held.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "output": str(self._output)}))
        os.replace(tmp, self._held)
        while self._hold.exists():
            time.sleep(0.05)

    def finish(self) -> None:
        self._inner.finish()


def maybe_hold(progress: Any, output: Path) -> Any:
    """``progress`` itself, or a :class:`HoldingProgress` when :data:`HOLD_DIR_ENV` is set."""
    hold_dir = os.environ.get(HOLD_DIR_ENV)
    return HoldingProgress(progress, Path(hold_dir), Path(output)) if hold_dir else progress
