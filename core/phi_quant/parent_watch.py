"""A cell's ``phi-quant`` subprocess ends, and cleans up, when the process that started it dies.

``compare`` and ``batch`` run every cell as a subprocess. If the process that started it goes
away without asking (a Ray worker killed by its raylet, by the OOM killer, or cancelled with
``ray.cancel(force=True)``), an orphaned ``quantize`` would go on converting, perhaps for an
hour, and might even move its output into place after the cell was reported failed. The cell
runner puts its own pid in :data:`PARENT_PID_ENV`; a ``phi-quant`` started with it asks Linux
for SIGTERM when that parent dies (``PR_SET_PDEATHSIG``), and SIGTERM becomes an ordinary
exception, so :func:`phi_quant.convert.convert` removes its ``.NAME.partial-*`` directory on the
way out; a second signal (Ctrl-C reaches the child and the runner, which then sends SIGTERM)
does not interrupt that cleanup. Elsewhere (macOS) only the signal handling applies.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["PARENT_PID_ENV", "child_env", "follow_parent", "Terminated"]

#: Set by the cell runner for its subprocesses: the pid they should not outlive.
PARENT_PID_ENV = "PHI_QUANT_PARENT_PID"

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like any exception (cleanup runs), exits 143 like the default."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` plus this process's pid as the parent the child must not outlive."""
    return {**env, PARENT_PID_ENV: str(os.getpid())}


def _interrupt_once(signum: int, frame: object) -> None:
    """The first SIGTERM or SIGINT unwinds; later ones are ignored so the cleanup can finish."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def follow_parent() -> None:
    """Called first by ``python -m phi_quant.cli``: no-op unless a cell runner started us."""
    expected = os.environ.pop(PARENT_PID_ENV, "")
    if not expected.isdigit():
        return
    signal.signal(signal.SIGTERM, _interrupt_once)
    signal.signal(signal.SIGINT, _interrupt_once)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
            return
    if os.getppid() != int(expected):  # the parent died before prctl took effect
        raise Terminated()
