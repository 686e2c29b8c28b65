"""Run the conformance kit against one backend in a fresh pytest process and collect per-check results.

``phi-quant plugins --check NAME`` calls :func:`run_kit`. A subprocess keeps the kit's runtimes,
caches and monkeypatching out of the caller, and is exactly what a backend's own test suite runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple, Sequence

__all__ = ["CheckResult", "run_kit"]

_TEST_FILE = '''\
from phi_quant.testing.kit import BackendConformance
{register}

class TestConformance(BackendConformance):
    backend = {backend!r}
'''

_REGISTER = '''\
import importlib
from phi_quant.plugins import get_manager
from phi_quant.errors import BackendNotInstalledError
try:
    get_manager().get({backend!r})
except BackendNotInstalledError:
    get_manager().register(importlib.import_module({plugin!r}), {backend!r})
'''


class CheckResult(NamedTuple):
    """One kit check: ``name`` like ``fidelity[reference-phi4-mini-int4]``, and what it found."""

    name: str
    passed: bool
    message: str


def run_kit(
    backend: str,
    *,
    variants: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    streaming: bool = True,
    plugin: str | None = None,
    pytest_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> list[CheckResult]:
    """Run every kit check against ``backend`` and return one :class:`CheckResult` per check.

    :param variants: tiny checkpoint variants to use (default: all).
    :param precisions: precisions to check (default: every precision the backend declares).
    :param streaming: run the slow peak-RSS check.
    :param plugin: import path of a plugin module to register when the backend is not installed
        (an author checking a plugin before packaging it).
    :returns: the checks in the order they ran; a run that could not even collect the kit yields
        a single failed ``kit`` result with pytest's output.
    """
    with tempfile.TemporaryDirectory(prefix="phi-quant-kit-") as tmp:
        root = Path(tmp)
        register = _REGISTER.format(backend=backend, plugin=plugin) if plugin else ""
        (root / "test_conformance.py").write_text(_TEST_FILE.format(backend=backend, register=register))
        (root / "pytest.ini").write_text("[pytest]\n")  # keep the caller's pytest configuration out
        report = root / "report.json"
        cmd = [sys.executable, "-m", "pytest", "test_conformance.py", "-p", "phi_quant", "-p", "no:cacheprovider",
               "-q", "--phi-quant-report", str(report)]
        if variants:
            cmd += ["--phi-quant-variants", ",".join(variants)]
        if precisions:
            cmd += ["--phi-quant-precisions", ",".join(precisions)]
        if not streaming:
            cmd.append("--phi-quant-skip-streaming")
        cmd += list(pytest_args)
        proc = subprocess.run(cmd, cwd=root, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
        results = [CheckResult(**r) for r in json.loads(report.read_text())] if report.exists() else []
    if not results:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        return [CheckResult("kit", False, f"pytest exited {proc.returncode} without running a check: " + " | ".join(tail))]
    return results
