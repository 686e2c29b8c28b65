"""Peak resident memory of Python code run in a fresh interpreter (for streaming tests and benches).

The number is the kernel's own high-water mark of the child's address space (``VmHWM`` in
``/proc/self/status``), read by the child itself at exit: no sampling, no missed spikes. We do
not trust ``ru_maxrss`` from ``wait4``/``RUSAGE_CHILDREN`` on Linux: ``exec`` folds the memory of
the process image it replaces into that figure, and with ``vfork`` that image is the *parent's*
(a pytest process holding torch reports hundreds of MB before the child has done anything). It
is used only when the child could not report (killed, or no ``/proc``: macOS, where it is exact);
on Windows psutil polls the working set.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Mapping, NamedTuple

__all__ = ["RssResult", "run_with_peak_rss"]


class RssResult(NamedTuple):
    """``returncode``, ``peak_rss`` in bytes, and the combined stdout/stderr text.

    ``cpu_seconds`` is user + system time of the child and every descendant it waited for (the
    kernel's own accounting, from ``wait4``), ``wall_seconds`` the time until it exited, and
    ``tree_peak_rss`` the child's peak plus the largest sum of its descendants' resident sets seen
    by sampling every 50 ms (equal to ``peak_rss`` when it starts no process).
    """

    returncode: int
    peak_rss: int
    output: str
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    tree_peak_rss: int = 0


def _maxrss_bytes(ru_maxrss: int) -> int:
    # Linux reports kilobytes, macOS bytes.
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


_WRAPPER = """
import atexit, runpy, sys
def _report(path=sys.argv[2]):
    try:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        with open(path, "w") as out:
            out.write(str(kb * 1024))
    except (OSError, StopIteration, ValueError):
        pass
atexit.register(_report)
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def run_with_peak_rss(code: str, *, timeout: float | None = None, env: Mapping[str, str] | None = None,
                      cwd: str | os.PathLike | None = None, check: bool = False) -> RssResult:
    """Run ``code`` as ``__main__`` in a fresh Python; return its exit code, peak RSS and output.

    ``check=True`` raises :class:`subprocess.CalledProcessError` (with the output) on a non-zero
    exit. On timeout the child is killed and the result has returncode -9.
    """
    with tempfile.TemporaryDirectory(prefix="phi-quant-rss-") as tmp:
        script, report = os.path.join(tmp, "main.py"), os.path.join(tmp, "peak")
        with open(script, "w", encoding="utf-8") as f:
            f.write(code)
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRAPPER, script, report], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None, cwd=cwd,
        )
        t0 = time.perf_counter()
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        children = _DescendantSampler(proc.pid)
        children.start()
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            cpu = 0.0
            if hasattr(os, "wait4"):
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                peak = _maxrss_bytes(usage.ru_maxrss)
                cpu = usage.ru_utime + usage.ru_stime
            else:  # pragma: no cover - Windows
                peak = _poll_peak(proc)
            wall = time.perf_counter() - t0
        finally:
            if timer:
                timer.cancel()
            children.stop()
        reader.join()
        proc.stdout.close()  # type: ignore[union-attr]
        try:
            with open(report) as f:
                peak = int(f.read())
        except (OSError, ValueError):
            pass  # the child died before reporting: keep the (upper-bound) rusage figure
    output = b"".join(chunks).decode("utf-8", "replace")
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, [sys.executable, "-c", "..."], output=output)
    return RssResult(int(proc.returncode), int(peak), output, cpu, wall, int(peak) + children.peak)


class _DescendantSampler(threading.Thread):
    """Largest sum of the resident sets of ``pid``'s descendants, sampled every 50 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak = pid, 0
        self._done = threading.Event()

    def run(self) -> None:
        try:
            import psutil

            root = psutil.Process(self.pid)
        except Exception:  # no psutil, or the child is already gone
            return
        while not self._done.wait(0.05):
            total = 0
            try:
                for child in root.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.peak = max(self.peak, total)

    def stop(self) -> None:
        self._done.set()
        self.join()


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
