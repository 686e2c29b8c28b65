"""Peak resident memory of Python code run in a fresh interpreter (for streaming tests and benches).

On POSIX the child is reaped with ``os.wait4``, whose ``ru_maxrss`` is the kernel's own peak for
exactly that process (and any children it waited for): no sampling, no missed spikes. Where
``wait4`` is missing (Windows) we fall back to polling with psutil.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Mapping, NamedTuple

__all__ = ["RssResult", "run_with_peak_rss"]


class RssResult(NamedTuple):
    """``returncode``, ``peak_rss`` in bytes, and the combined stdout/stderr text."""

    returncode: int
    peak_rss: int
    output: str


def _maxrss_bytes(ru_maxrss: int) -> int:
    # Linux reports kilobytes, macOS bytes.
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


def run_with_peak_rss(code: str, *, timeout: float | None = None, env: Mapping[str, str] | None = None,
                      cwd: str | os.PathLike | None = None, check: bool = False) -> RssResult:
    """Run ``code`` with ``python -c`` in a subprocess; return its exit code, peak RSS and output.

    ``check=True`` raises :class:`subprocess.CalledProcessError` (with the output) on a non-zero
    exit. On timeout the child is killed and the result has returncode -9.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None, cwd=cwd,
    )
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    timer = threading.Timer(timeout, proc.kill) if timeout else None
    if timer:
        timer.start()
    try:
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            peak = _maxrss_bytes(usage.ru_maxrss)
        else:  # pragma: no cover - Windows
            peak = _poll_peak(proc)
    finally:
        if timer:
            timer.cancel()
    reader.join()
    proc.stdout.close()  # type: ignore[union-attr]
    output = b"".join(chunks).decode("utf-8", "replace")
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, [sys.executable, "-c", "..."], output=output)
    return RssResult(int(proc.returncode), int(peak), output)


def _poll_peak(proc: subprocess.Popen) -> int:  # pragma: no cover - Windows
    import psutil

    peak = 0
    p = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            info = p.memory_info()
            peak = max(peak, getattr(info, "peak_wset", 0) or info.rss)
        except psutil.Error:
            break
        time.sleep(0.01)
    return peak
