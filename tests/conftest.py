"""Shared fixtures for the core tests: a clean plugin manager and fake in-process backends.

The fake ``npy`` backend is a complete, honest backend: it quantizes (fp32 copy or int8 per-row),
streams tensors into ``.npz`` files, and loads them back into the numpy oracle, so ``convert``,
``run`` and ``eval`` can be tested end to end without any vendor runtime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from phi_quant import plugins
from phi_quant.errors import BadWeightsError, UnsupportedPrecisionError
from phi_quant.hookspecs import hookimpl
from phi_quant.types import (
    HOOK_CONTRACT_VERSION,
    BackendInfo,
    ExportResult,
    HardwareReport,
    PrecisionSpec,
    QuantizedTensor,
)


class NpyModel:
    """An exported ``npy`` directory loaded into the numpy oracle."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        from phi_quant.model.config import normalize_config
        from phi_quant.reference import ReferenceModel

        self.config = normalize_config(json.loads((path / "config.json").read_text()))
        weights = {}
        for f in sorted((path / "weights").glob("*.npz")):
            with np.load(f) as a:
                weights[f.stem] = a["w"] if "w" in a else a["q"].astype(np.float32) * a["scale"]
        self.ref = ReferenceModel(self.config, weights=weights)
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.path = path
        tc = path / "tokenizer_config.json"
        self.tokenizer_config = json.loads(tc.read_text()) if tc.is_file() else {}
        self.chat_template = self.tokenizer_config.get("chat_template")

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        return self.ref.logits(list(ids))

    def generate(self, prompt: str, max_new_tokens: int = 32, *, chat: bool = False) -> str:
        from phi_quant.answers import render_chat

        ids = self.tokenize(render_chat(self, prompt) if chat else prompt)
        ends = set(self.config.eos_token_ids)
        out = self.ref.generate(ids, max_new_tokens, eos_ids=ends or None)  # the new ids only
        return self.tok.decode([t for t in out if t not in ends], skip_special_tokens=False)

    def close(self) -> None:
        self.ref = None


class NpyBackend:
    """Fake backend writing one ``.npz`` per tensor (quantized arrays as stored); ``fail_after=N`` raises at the N-th tensor."""

    def __init__(self, name: str = "npy", *, fail_after: int | None = None, contract: str = HOOK_CONTRACT_VERSION,
                 interrupt: bool = False):
        self.name = name
        self.fail_after = fail_after
        self.contract = contract
        self.interrupt = interrupt
        self.exported_to: list[Path] = []

    @hookimpl
    def backend_info(self) -> BackendInfo:
        return BackendInfo(name=self.name, format="NumPy .npy", runtime="numpy", hook_contract=self.contract,
                           description="test backend")

    @hookimpl
    def detect_hardware(self) -> HardwareReport:
        return HardwareReport(backend=self.name, available=True, devices=[{"name": "CPU", "type": "cpu"}])

    @hookimpl
    def supported_precisions(self) -> list[PrecisionSpec]:
        return [
            PrecisionSpec("fp32", "f32", "float32 copy"),
            PrecisionSpec("int8", "int8-row", "int8 per-row symmetric", schemes=("int8-row",)),
        ]

    @hookimpl
    def quantize(self, tensor, options) -> QuantizedTensor:
        w = tensor.to_float32()
        if not np.isfinite(w).all():
            raise BadWeightsError(f"tensor {tensor.name} holds NaN or Inf")
        if options.precision == "fp32" or w.ndim == 1:
            return QuantizedTensor(tensor.name, "f32", tuple(w.shape), {"w": w}, dequantize=lambda: w)
        if options.precision != "int8":
            raise UnsupportedPrecisionError(f"npy backend has no {options.precision}")
        scale = np.maximum(np.abs(w).max(axis=1, keepdims=True) / 127.0, 1e-12).astype(np.float32)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        return QuantizedTensor(tensor.name, "int8-row", tuple(w.shape), {"q": q, "scale": scale},
                               dequantize=lambda: q.astype(np.float32) * scale)

    @hookimpl
    def export(self, source, output_dir: Path, options, progress) -> ExportResult:
        self.exported_to.append(output_dir)
        (output_dir / "weights").mkdir()
        files = []
        for i, t in enumerate(source.tensors()):
            if self.fail_after is not None and i == self.fail_after:
                if self.interrupt:
                    raise KeyboardInterrupt
                raise RuntimeError("injected failure in the middle of export")
            qt = self.quantize(t, options)
            rel = f"weights/{t.name}.npz"
            np.savez(output_dir / rel, **qt.arrays)
            files.append(rel)
            progress.advance(t.nbytes, t.name)
        n_tensors = len(files)
        shutil.copy(source.path / "config.json", output_dir / "config.json")
        shutil.copy(source.tokenizer_files["tokenizer.json"], output_dir / "tokenizer.json")
        files += ["config.json", "tokenizer.json"]
        if "tokenizer_config.json" in source.tokenizer_files:
            shutil.copy(source.tokenizer_files["tokenizer_config.json"], output_dir / "tokenizer_config.json")
            files.append("tokenizer_config.json")
        scheme = "f32" if options.precision == "fp32" else "int8-row"
        return ExportResult(files=files, scheme=scheme, details={"tensors": n_tensors},
                            run_instructions="```python\nimport numpy as np  # load weights/*.npz\n```",
                            notes=["norms stay float32"])

    @hookimpl
    def load_model(self, path: Path, options: dict) -> Any:
        return NpyModel(Path(path))


class MinimalBackend:
    """A backend with only ``backend_info`` and ``supported_precisions`` (for registry tests)."""

    def __init__(self, name: str, precisions: Sequence[str] = ("fp16",), contract: str = HOOK_CONTRACT_VERSION):
        self.name = name
        self.precision_names = tuple(precisions)
        self.contract = contract

    @hookimpl
    def backend_info(self) -> BackendInfo:
        return BackendInfo(name=self.name, format=f"{self.name}-format", runtime=f"{self.name}-runtime",
                           hook_contract=self.contract)

    @hookimpl
    def supported_precisions(self) -> list[PrecisionSpec]:
        return [PrecisionSpec(p, f"{self.name}-{p}") for p in self.precision_names]


@pytest.fixture
def manager():
    """A fresh process-wide plugin manager that loads no entry points; restored afterwards."""
    fresh = plugins.PhiQuant(load_entry_points=False)
    old = plugins.reset_manager(fresh)
    try:
        yield fresh
    finally:
        plugins.reset_manager(old)


@pytest.fixture
def npy_backend(manager):
    """The fake ``npy`` backend registered in the process-wide manager (unregistered afterwards)."""
    backend = NpyBackend()
    manager.register(backend, "npy")
    try:
        yield backend
    finally:
        manager.unregister("npy")


@pytest.fixture
def fakes():
    """The fake backend classes, for tests that build their own."""
    return {"NpyBackend": NpyBackend, "MinimalBackend": MinimalBackend}


@pytest.fixture(autouse=True)
def _debug_off(monkeypatch):
    """CLI tests check one-line errors, so tracebacks stay off unless a test asks."""
    monkeypatch.delenv("PHI_QUANT_DEBUG", raising=False)


@pytest.fixture(scope="module")
def real_smollm2(real_sources):
    """The ModelSource of real:smollm2 (continuous weights, bf16)."""
    return real_sources("smollm2")


@pytest.fixture(scope="module")
def real_smollm2_grid(real_sources):
    """The ModelSource of real:smollm2-grid (the GGUF's exact values, float32)."""
    return real_sources("smollm2-grid")


# -- hostile-input helpers: the real CLI in a subprocess, one-line errors, what is left on disk ----

def _lines(text: str) -> list[str]:
    return [ln for ln in (text or "").splitlines() if ln.strip()]


def assert_one_line_error(result: Any, code: int, *fragments: str) -> str:
    """``result`` (a CliRunner Result or a CompletedProcess) failed with ``code`` and exactly one
    ``Error: ...`` line on stderr holding every fragment, and no traceback anywhere. Returns the line."""
    rc = getattr(result, "exit_code", getattr(result, "returncode", None))
    stderr, stdout = result.stderr or "", result.stdout or ""
    exc = getattr(result, "exception", None)
    assert exc is None or isinstance(exc, SystemExit), f"uncaught {type(exc).__name__}: {exc}"
    assert "Traceback" not in stderr + stdout, stderr
    assert rc == code, (rc, stderr, stdout)
    lines = _lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def leftovers(parent: Path, keep: Sequence[str] = ()) -> list[str]:
    """Names in ``parent`` besides ``keep`` (temporary directories a failure must not leave)."""
    return sorted(p.name for p in Path(parent).iterdir() if p.name not in set(keep))


class CliProcess:
    """Runs ``python -m phi_quant.cli`` as a subprocess, with a plugin allow-list and extra sites."""

    def __init__(self, plugins: str = "reference"):
        self.plugins = plugins

    def env(self, plugins: str | None = None, site: Sequence[Path] = (), extra: dict[str, str] | None = None) -> dict:
        import os

        env = {k: v for k, v in os.environ.items() if k != "PHI_QUANT_DEBUG"}
        env["PHI_QUANT_PLUGINS"] = self.plugins if plugins is None else plugins
        if site:
            env["PYTHONPATH"] = os.pathsep.join([*(str(s) for s in site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.update(extra or {})
        return env

    def command(self, args: Sequence[Any]) -> list[str]:
        import sys

        return [sys.executable, "-m", "phi_quant.cli", *(str(a) for a in args)]

    def run(self, *args: Any, timeout: float = 180, limits: dict[int, int] | None = None, **env_kw: Any):
        """Run to completion; ``limits`` maps ``resource.RLIMIT_*`` to a soft and hard limit."""
        import resource
        import subprocess

        def preexec() -> None:
            for which, value in (limits or {}).items():
                resource.setrlimit(which, (value, value))

        return subprocess.run(self.command(args), env=self.env(**env_kw), capture_output=True, text=True,
                              timeout=timeout, preexec_fn=preexec if limits else None)

    def start(self, *args: Any, **env_kw: Any):
        """A running process (stdout/stderr piped as text) in its own process group, so that
        ``os.killpg(proc.pid, SIGINT)`` reaches it and its children like Ctrl-C in a terminal."""
        import subprocess

        return subprocess.Popen(self.command(args), env=self.env(**env_kw), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture
def cli_process() -> CliProcess:
    """The real ``phi-quant`` command as a subprocess (only the ``reference`` plugin loads by default)."""
    return CliProcess()


@pytest.fixture
def one_line_error():
    """``one_line_error(result, code, *fragments)``: see :func:`assert_one_line_error`."""
    return assert_one_line_error


@pytest.fixture
def left_in():
    """``left_in(parent, keep=())``: what else is in ``parent`` (see :func:`leftovers`)."""
    return leftovers


def make_dist(root: Path, dist: str, version: str, entry: str, module: str, source: str) -> None:
    """A minimal installed distribution on ``root``: a module plus a dist-info with one phi_quant entry point."""
    import textwrap

    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\nRequires-Dist: numpy\n")
    (info / "entry_points.txt").write_text(f"[phi_quant]\n{entry} = {module}\n")


@pytest.fixture
def plugin_dist():
    """``plugin_dist(root, dist, version, entry, module, source)``: an installed-looking plugin on ``root``."""
    return make_dist


@pytest.fixture
def quantize_refuses(npy_backend, tmp_path):
    """``quantize_refuses(model, *fragments, code=2, args=())``: ``phi-quant quantize MODEL -b npy -p fp32
    -o OUT`` (in process) fails with one ``Error:`` line holding every fragment, no traceback, and
    nothing is left where OUT would have been. Returns the line."""
    from click.testing import CliRunner

    from phi_quant.cli import cli

    def check(model: Any, *fragments: str, code: int = 2, args: Sequence[str] = (), precision: str = "fp32") -> str:
        parent = tmp_path / "outputs"
        parent.mkdir(exist_ok=True)
        out = parent / "out"
        res = CliRunner().invoke(cli, ["quantize", str(model), "-b", "npy", "-p", precision, "-o", str(out), *args])
        line = assert_one_line_error(res, code, *fragments)
        assert leftovers(parent) == [], "nothing may be left where OUT would have been"
        return line

    return check


#: A backend for the subprocess tests, steered by environment variables: ``TESTPLUG_READY=path``
#: (after writing a file, record the temporary directory there and sleep: a signal target),
#: ``TESTPLUG_FILL=1`` (then fill the file system it writes to, leaving ``TESTPLUG_FILL_LEAVE``
#: bytes free), ``TESTPLUG_CARD_BYTES`` /
#: ``TESTPLUG_DETAILS_BYTES`` (make the model card / the manifest that large).
TESTPLUG = """
import errno, os, time
from pathlib import Path
from phi_quant.hookspecs import hookimpl
from phi_quant.types import BackendInfo, ExportResult, PrecisionSpec

@hookimpl
def backend_info():
    return BackendInfo(name="testplug", format="test", runtime="none", options=())

@hookimpl
def supported_precisions():
    return [PrecisionSpec("fp32", "copy", group_sizes=(), symmetric=())]

@hookimpl
def export(source, output_dir, options, progress):
    (output_dir / "weights.bin").write_bytes(bytes(4096))
    files = ["weights.bin"]
    if os.environ.get("TESTPLUG_READY"):
        Path(os.environ["TESTPLUG_READY"]).write_text(str(output_dir))
        for _ in range(1200):
            time.sleep(0.05)
    if os.environ.get("TESTPLUG_FILL"):
        fill = output_dir / "fill.bin"
        try:
            with open(fill, "wb") as f:
                while True:
                    f.write(bytes(65536))
                    f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        leave = int(os.environ.get("TESTPLUG_FILL_LEAVE", "0"))
        if leave:
            os.truncate(fill, max(0, fill.stat().st_size - leave))
        files.append("fill.bin")
    card = int(os.environ.get("TESTPLUG_CARD_BYTES", "0"))
    details = int(os.environ.get("TESTPLUG_DETAILS_BYTES", "0"))
    return ExportResult(files=files, scheme="copy", run_instructions="x" * card, details={"pad": "y" * details})
"""


@pytest.fixture
def testplug_site(tmp_path, plugin_dist) -> Path:
    """A site directory holding the ``testplug`` backend (for ``cli_process.run(..., plugins="testplug", site=[it])``)."""
    site = tmp_path / "site"
    site.mkdir()
    plugin_dist(site, "phi-quant-testplug", "0.1", "testplug", "pq_testplug", TESTPLUG)
    return site
