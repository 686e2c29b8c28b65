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

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        return self.ref.logits(list(ids))

    def generate(self, prompt: str, max_new_tokens: int = 32, *, chat: bool = False) -> str:
        ids = self.tokenize(prompt)
        out = self.ref.generate(ids, max_new_tokens, eos_ids=list(self.config.eos_token_ids) or None)
        return self.detokenize(out)  # the oracle returns the new ids only

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
        shutil.copy(source.path / "config.json", output_dir / "config.json")
        shutil.copy(source.tokenizer_files["tokenizer.json"], output_dir / "tokenizer.json")
        files += ["config.json", "tokenizer.json"]
        scheme = "f32" if options.precision == "fp32" else "int8-row"
        return ExportResult(files=files, scheme=scheme, details={"tensors": len(files) - 2},
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
