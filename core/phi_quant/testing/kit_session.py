"""What the conformance kit computes once per test class and shares between its checks.

Exports are cached per (variant, precision) on disk, fidelity results per (variant, precision)
in memory; only one exported model and one variant's oracle logits are held at a time, so a
backend with five precisions and four variants never has twenty runtimes open together. A
failure is cached too: the check that owns it reports the error, the checks that depend on it
fail with a pointer to it instead of repeating the work.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from ..errors import PhiQuantError
from ..types import ExportOptions, LoadedModel

__all__ = ["ExportRecord", "FidelityResult", "KitSession"]


@dataclass
class ExportRecord:
    """One cached export through the core's ``convert``."""

    path: Path
    error: BaseException | None = None
    seconds: float = 0.0
    progress_done: int = 0
    progress_total: int = 0
    progress_items: int = 0
    files: list[str] = field(default_factory=list)


@dataclass
class FidelityResult:
    """Next-token fidelity of one export over all of a variant's prompts."""

    kl_mean: float  # mean KL(oracle || backend) over every position of every prompt
    kl_max: float
    top1: float  # fraction of positions whose argmax agrees with the oracle
    max_abs_logit: float
    positions: int

    def describe(self) -> str:
        return (
            f"KL mean {self.kl_mean:.3g} (max {self.kl_max:.3g}), top-1 {self.top1:.4f}, "
            f"max |dlogit| {self.max_abs_logit:.3g} over {self.positions} positions"
        )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class KitSession:
    """Caches for one backend under test; ``options_for``/``load_options_for`` come from the test class."""

    def __init__(
        self,
        backend: str,
        workdir: Path,
        options_for: Callable[[str, str], ExportOptions],
        load_options_for: Callable[[str, str], dict[str, Any]],
        plan: Any = None,
    ):
        self.backend_name = backend
        self.plan = plan  # the test class's KitPlan: variants, precisions, declared specs
        self.workdir = Path(workdir)
        self.options_for = options_for
        self.load_options_for = load_options_for
        self._exports: dict[tuple[str, str], ExportRecord] = {}
        self._fidelity: dict[tuple[str, str], FidelityResult | BaseException] = {}
        self._model_key: tuple[str, str] | None = None
        self._model: LoadedModel | BaseException | None = None
        self._oracle_key: str | None = None
        self._oracle: list[np.ndarray] = []
        self._tokenizers: dict[str, Any] = {}

    # -- the backend and its inputs ------------------------------------------------------------
    @property
    def backend(self) -> Any:
        from ..plugins import get_manager

        return get_manager().get(self.backend_name)

    def checkpoint(self, variant: str) -> Path:
        from .factory import cached_checkpoint

        return Path(cached_checkpoint(variant))

    def tokenizer(self, variant: str) -> Any:
        """The Hugging Face tokenizer of the checkpoint: the ground truth for token ids."""
        if variant not in self._tokenizers:
            from tokenizers import Tokenizer

            self._tokenizers[variant] = Tokenizer.from_file(str(self.checkpoint(variant) / "tokenizer.json"))
        return self._tokenizers[variant]

    def prompts(self, variant: str) -> list[str]:
        from .prompts import test_prompts

        return list(test_prompts(variant))

    def prompt_ids(self, variant: str) -> list[list[int]]:
        tok = self.tokenizer(variant)
        return [tok.encode(p, add_special_tokens=False).ids for p in self.prompts(variant)]

    def fresh_dir(self, name: str) -> Path:
        """A new, not yet existing path under the session directory (``convert`` creates it)."""
        parent = self.workdir / name
        parent.mkdir(parents=True, exist_ok=False)
        return parent / "out"

    # -- export ---------------------------------------------------------------------------------
    def export(self, variant: str, precision: str) -> ExportRecord:
        """Convert ``variant`` at ``precision`` through the core, once per session."""
        return self.export_with(precision, variant, self.options_for(variant, precision))

    def export_with(self, tag: str, variant: str, options: ExportOptions) -> ExportRecord:
        """Convert ``variant`` with ``options`` through the core, once per (variant, tag)."""
        key = (variant, tag)
        if key not in self._exports:
            from ..convert import convert
            from ..progress import RecordingProgress

            out = self.fresh_dir(f"export-{variant}-{tag}")
            record = ExportRecord(path=out)
            progress = RecordingProgress()
            t0 = time.perf_counter()
            try:
                result = convert(self.checkpoint(variant), self.backend_name, options, out, progress=progress)
                record.files = list(result.files)
            except Exception as exc:  # noqa: BLE001 - reported by test_export, pointed to by the others
                record.error = exc
            record.seconds = time.perf_counter() - t0
            record.progress_done, record.progress_total = progress.done, progress.total
            record.progress_items = len(progress.items)
            self._exports[key] = record
        return self._exports[key]

    def require_export(self, variant: str, precision: str) -> Path:
        record = self.export(variant, precision)
        if record.error is not None:
            pytest.fail(f"needs the {variant}/{precision} export, which failed (see test_export): "
                        f"{_describe(record.error)}", pytrace=False)
        return record.path

    # -- the exported model in its runtime ---------------------------------------------------------
    def model(self, variant: str, precision: str) -> LoadedModel:
        """The exported model opened by the backend's ``load_model``; one open at a time."""
        key = (variant, precision)
        if self._model_key != key:
            path = self.require_export(variant, precision)
            self._close_model()
            self._model_key = key
            try:
                self._model = self.backend.load_model(path, self.load_options_for(variant, precision))
            except Exception as exc:  # noqa: BLE001 - reported by test_load
                self._model = exc
        if isinstance(self._model, BaseException):
            pytest.fail(f"needs {variant}/{precision} loaded, which failed (see test_load): "
                        f"{_describe(self._model)}", pytrace=False)
        return self._model  # type: ignore[return-value]

    def _close_model(self) -> None:
        model, self._model, self._model_key = self._model, None, None
        if model is not None and not isinstance(model, BaseException):
            try:
                model.close()
            except Exception:  # noqa: BLE001 - closing must not hide the result of a check
                pass

    # -- the oracle and fidelity ------------------------------------------------------------------
    def oracle_logits(self, variant: str) -> list[np.ndarray]:
        """fp32 numpy oracle logits for each prompt of ``variant`` (one variant cached at a time)."""
        if self._oracle_key != variant:
            from ..model.source import open_model
            from ..reference import ReferenceModel

            self._oracle, self._oracle_key = [], None
            with open_model(self.checkpoint(variant)) as src:
                ref = ReferenceModel.from_source(src)
            self._oracle = [np.asarray(ref.logits(ids), dtype=np.float32) for ids in self.prompt_ids(variant)]
            self._oracle_key = variant
        return self._oracle

    def fidelity(self, variant: str, precision: str) -> FidelityResult:
        """Compare the backend's logits with the oracle's on every prompt (cached, errors too)."""
        key = (variant, precision)
        if key not in self._fidelity:
            model = self.model(variant, precision)
            try:
                self._fidelity[key] = self._measure(variant, model)
            except (PhiQuantError, ValueError, RuntimeError, TypeError, IndexError) as exc:
                self._fidelity[key] = exc
        found = self._fidelity[key]
        if isinstance(found, BaseException):
            pytest.fail(f"running {variant}/{precision} failed: {_describe(found)}", pytrace=False)
        return found

    def fidelity_of(self, path: Path, variant: str, load_options: dict[str, Any]) -> FidelityResult:
        """Fidelity of an export outside the (variant, precision) cache (opened, measured, closed)."""
        self._close_model()
        model = self.backend.load_model(path, load_options)
        try:
            return self._measure(variant, model)
        finally:
            model.close()

    def _measure(self, variant: str, model: LoadedModel) -> FidelityResult:
        from ..fidelity import compare_logits

        kl_sum = top1_sum = 0.0
        kl_max = max_abs = 0.0
        n = 0
        for ids, ref in zip(self.prompt_ids(variant), self.oracle_logits(variant)):
            got = np.asarray(model.logits(ids))
            if got.shape != ref.shape:
                raise ValueError(f"logits for {len(ids)} tokens have shape {got.shape}, expected {ref.shape}")
            r = compare_logits(ref, got.astype(np.float32))
            k = int(r.positions)
            kl_sum += float(r.kl_mean) * k
            top1_sum += float(r.top1_agreement) * k
            kl_max = max(kl_max, float(r.kl_max))
            max_abs = max(max_abs, float(r.max_abs_diff))
            n += k
        return FidelityResult(kl_sum / n, kl_max, top1_sum / n, max_abs, n)

    def close(self) -> None:
        self._close_model()
        self._oracle, self._oracle_key = [], None
        shutil.rmtree(self.workdir, ignore_errors=True)
