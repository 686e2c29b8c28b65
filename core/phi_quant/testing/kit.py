"""The backend conformance kit: one named pytest test for every promise a backend makes.

A backend's test suite runs it by subclassing :class:`BackendConformance`::

    from phi_quant.testing.kit import BackendConformance

    class TestConformance(BackendConformance):
        backend = "mybackend"

and ``phi-quant plugins --check mybackend`` runs the same tests through :func:`run_kit`. Every
check is its own test, parametrised ``[backend-variant-precision]`` over the tiny checkpoints of
:mod:`phi_quant.testing.factory` and the precisions the backend declares, so a report says
exactly which promise breaks where:

==================================  ==============================================================
``test_backend_info``               name, hook contract, architectures, precisions and their
                                    thresholds are sane
``test_export``                     ``phi_quant.convert.convert`` succeeds
``test_progress``                   ``progress.advance`` reported every byte of the source
``test_load``                       ``load_model`` opens the output; logits ``[T, vocab]`` float32
``test_tokenizer``                  token ids equal the Hugging Face tokenizer's on every prompt
``test_fidelity``                   KL / top-1 / max abs logit vs the numpy oracle within the
                                    thresholds the backend declares
``test_kl_order``                   KL(fp32) <= KL(fp16) <= KL(int8) <= KL(int4), small tolerance
``test_quantize``                   the ``quantize`` hook keeps the shape and dequantizes close
``test_hook_matches_export``        for EVERY tensor, the ``quantize`` hook's bytes hash to the
                                    sha256 the export recorded for what it wrote (contract >= 1.3)
``test_recipe``                     int4 with each recipe (``clip``, ``hqq``, and ``awq+gptq``
                                    where the backend has the 1.4 ``tensor_plan`` hook): export,
                                    load, fidelity within the int4 bounds, hook == export bytes
``test_atomic_output``              a failure injected mid-stream leaves nothing anywhere
``test_rejects_nan_weights``        NaN weights -> ``BadWeightsError`` naming the tensor
``test_rejects_inf_weights``        Inf weights -> ``BadWeightsError`` naming the tensor
``test_refuses_undeclared_precision``  ``export`` refuses it with ``UnsupportedPrecisionError``
``test_refuses_existing_output``    ``OutputExistsError``; the existing directory is untouched
``test_streaming``                  peak RSS converting a generated 1.1 GB checkpoint stays under
                                    :attr:`BackendConformance.rss_limit_mb` and does not grow
                                    from a 0.55 GB one with the same shapes (slow; marker
                                    ``phi_quant_streaming``, skip with ``--phi-quant-skip-streaming``)
``test_streaming_moe``              the same for a backend that writes PhiMoE: 0.71 and 1.11 GB
                                    checkpoints with 8 and 16 experts of the same shapes (slow)
==================================  ==============================================================

Exports are cached per (variant, precision) for the whole class, so the checks that read an
export share one conversion.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from ..arch import architecture_names
from ..errors import BadWeightsError, OutputExistsError, PhiQuantError, UnsupportedPrecisionError
from ..types import HOOK_CONTRACT_VERSION, PRECISIONS, ExportOptions, NullProgress, PrecisionSpec, QuantizedTensor
from .kit_faults import FailingSource, InjectedFailure, poison_checkpoint
from .kit_run import CheckResult, run_kit
from .kit_session import KitSession

__all__ = ["BackendConformance", "CheckResult", "run_kit", "KL_ORDER", "DEFAULT_RSS_LIMIT_MB",
           "DEFAULT_STREAMING_PRECISIONS"]

#: Precisions whose KL must not decrease in this order (bf16 is left out: lossless on bf16 checkpoints).
KL_ORDER = ("fp32", "fp16", "int8", "int4")

#: Peak RSS allowed for a conversion when the backend declares nothing tighter or looser.
DEFAULT_RSS_LIMIT_MB = 600.0

#: Precisions ``test_streaming`` converts by default: one float and one packed-integer code path.
DEFAULT_STREAMING_PRECISIONS = ("fp16", "int4")

#: A precision no backend has, for the refusal check.
NONSENSE_PRECISION = "int3"

#: Recipes ``test_recipe`` exports with (round to nearest is what every other check exports).
KIT_RECIPES = ("clip", "hqq", "awq+gptq")

#: Calibration tokens of the calibrated kit recipes: enough for the statistics, seconds on a tiny model.
KIT_CALIBRATION_TOKENS = 256


def _contract_at_least(info: Any, minor: int) -> bool:
    major, _, rest = str(info.hook_contract).partition(".")
    return major == HOOK_CONTRACT_VERSION.split(".")[0] and int(rest or 0) >= minor


@dataclass
class KitPlan:
    """What one test class checks, resolved at collection time from the class, options and backend."""

    backend: str
    variants: list[str] = field(default_factory=list)
    precisions: list[str] = field(default_factory=list)
    declared: list[PrecisionSpec] = field(default_factory=list)
    error: str = ""

    @property
    def first_variant(self) -> str:
        return self.variants[0]

    def spec(self, precision: str) -> PrecisionSpec | None:
        return next((s for s in self.declared if s.precision == precision), None)

    @property
    def undeclared(self) -> list[str]:
        names = {s.precision for s in self.declared}
        return [p for p in PRECISIONS if p not in names] + [NONSENSE_PRECISION]


def _split(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if v and v.strip()]


def _option(config: Any, name: str) -> Any:
    return config.getoption(name, default=None)


def _ini(config: Any, name: str, default: Any = None) -> Any:
    try:
        return config.getini(name)
    except ValueError:  # the pytest plugin is not loaded: no such ini key
        return default


_PLANS = pytest.StashKey[dict]()


def _plan(cls: type, config: Any, module: Any = None) -> KitPlan:
    """The class's plan, computed once per pytest run (kept in the config's stash)."""
    plans = config.stash.setdefault(_PLANS, {})
    if cls in plans:
        return plans[cls]
    from .factory import ALL_VARIANTS, variant_spec

    module_backend = getattr(module, "phi_quant_backend", None)
    backend = (cls.backend or (module_backend if isinstance(module_backend, str) else None)
               or _option(config, "phi_quant_backend") or _ini(config, "phi_quant_backend") or "")
    plan = KitPlan(backend=backend)
    plan.variants = _split(_option(config, "phi_quant_variants")) or list(cls.variants or ALL_VARIANTS)
    if not backend:
        plan.error = ("no backend to check: set `backend = \"NAME\"` on the BackendConformance subclass, "
                      "`phi_quant_backend = NAME` in the pytest ini options, or pass --phi-quant-backend NAME")
    else:
        try:
            from ..plugins import get_manager

            found = get_manager().get(backend)
            plan.declared = found.precisions()
            if not (_split(_option(config, "phi_quant_variants")) or cls.variants):
                # by default, the tiny variants of every architecture the backend writes
                plan.variants = [v for v in plan.variants if found.info.writes(variant_spec(v).arch)]
                if not plan.variants:
                    plan.error = (f"backend {backend!r} writes {', '.join(found.info.architectures)}: the kit has no "
                                  "tiny checkpoint of those architectures")
        except PhiQuantError as exc:
            plan.error = str(exc)
    plan.precisions = (_split(_option(config, "phi_quant_precisions")) or list(cls.precisions or ())
                       or [s.precision for s in plan.declared])
    plans[cls] = plan
    return plan


def _probe(source: Any) -> Any:
    """The tensor the ``quantize`` checks use: layer 0's first matrix (phi3: the fused qkv)."""
    return next(t for t in source.tensors() if t.layer == 0 and t.role.is_matmul)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _chain(exc: BaseException | None) -> list[BaseException]:
    out = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _check_hook_digests(kit: Any, variant: str, output: Path, options: ExportOptions) -> int:
    """Assert the ``quantize`` hook reproduces, for every tensor, the bytes the export recorded."""
    from ..model.source import open_model
    from ..quant.digest import digest_arrays

    manifest = json.loads((output / "phi-quant.json").read_text())
    records = {r["name"]: r for r in ((manifest.get("quantization") or {}).get("tensors") or [])}
    with open_model(kit.checkpoint(variant)) as src:
        names = [i.name for i in src.tensor_infos()]
        missing = [n for n in names if "sha256" not in records.get(n, {})]
        assert not missing, (f"the manifest's quantization block has no sha256 for {len(missing)} tensor(s) (first: "
                             f"{missing[0]}): export must record ExportResult.quantization with a digest per tensor")
        bad = []
        for tensor in src.tensors():
            qt = kit.backend.quantize(tensor, options, src)
            if digest_arrays(qt.arrays) != records[tensor.name]["sha256"]:
                bad.append(f"{tensor.name} (export: {records[tensor.name].get('scheme')}, hook: {qt.scheme})")
    assert not bad, f"the quantize hook disagrees with what export wrote for {len(bad)} tensor(s): {'; '.join(bad[:5])}"
    return len(names)


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


class BackendConformance:
    """Subclass as ``TestSomething`` and set :attr:`backend`; pytest collects every check below.

    Override the attributes and the two ``*_options`` methods to fit your backend; everything
    else is shared by all backends.
    """

    #: Backend name as the CLI knows it. ``None``: the module's ``phi_quant_backend`` global,
    #: ``--phi-quant-backend`` or the ``phi_quant_backend`` ini option.
    backend: str | None = None
    #: Tiny checkpoint variants to check (``None``: those of ``phi_quant.testing.factory.ALL_VARIANTS``
    #: whose architecture the backend declares; ``--phi-quant-variants a,b`` overrides).
    variants: Sequence[str] | None = None
    #: Precisions to check (``None``: every precision the backend declares).
    precisions: Sequence[str] | None = None
    #: Peak RSS bound in MiB for converting the large generated checkpoint (``test_streaming``).
    rss_limit_mb: float = DEFAULT_RSS_LIMIT_MB
    #: Precisions ``test_streaming`` converts (``None``: fp16 and int4 where declared, else the first).
    streaming_precisions: Sequence[str] | None = None
    #: How much peak RSS may grow per MiB of extra layers (same tensor shapes) in ``test_streaming``.
    rss_growth_fraction: float = 0.1
    #: ``KL(a) <= KL(b) * (1 + relative) + absolute`` for a before b in :data:`KL_ORDER`.
    kl_order_tolerance: tuple[float, float] = (0.25, 1e-5)
    #: Largest relative RMS error of a dequantized ``quantize`` result, per precision.
    quantize_error_bounds: dict[str, float] = {"fp32": 1e-6, "fp16": 1e-3, "bf16": 1e-2, "int8": 0.03, "int4": 0.25}
    #: The tensor the bad-weights checks poison (it exists in every Phi3 checkpoint).
    poisoned_tensor: str = "model.layers.0.self_attn.o_proj.weight"

    def export_options(self, variant: str, precision: str) -> ExportOptions:
        """Options for every export the kit makes; override to pass e.g. a context length."""
        return ExportOptions(precision=precision)

    def load_options(self, variant: str, precision: str) -> dict[str, Any]:
        """Options for ``load_model`` (e.g. ``{"context_length": 4096}``)."""
        return {}

    def recipe_options(self, variant: str, precision: str, recipe: str) -> ExportOptions:
        """Options for ``test_recipe``: the export options with ``recipe``; ``hqq`` needs zero
        points, so it asks for the asymmetric scheme (override where the backend names it otherwise)."""
        import dataclasses

        from ..calib import needs_calibration

        options = dataclasses.replace(self.export_options(variant, precision), recipe=recipe)
        if needs_calibration(options):
            options = dataclasses.replace(options, calibration_tokens=KIT_CALIBRATION_TOKENS)
        return dataclasses.replace(options, symmetric=False) if recipe == "hqq" else options

    # -- parametrisation and the shared session ----------------------------------------------------
    def pytest_generate_tests(self, metafunc: Any) -> None:
        plan = _plan(type(self), metafunc.config, metafunc.module)
        b = plan.backend or "unset"
        names = metafunc.fixturenames
        if plan.error:  # one placeholder per test: the ``kit`` fixture reports the error
            for name in ("case", "variant", "precision", "undeclared"):
                if name in names:
                    metafunc.parametrize(name, [None], ids=[f"{b}-unavailable"], scope="class")
            return
        if "case" in names:
            cases = [(v, p) for v in plan.variants for p in plan.precisions]
            metafunc.parametrize("case", cases, ids=[f"{b}-{v}-{p}" for v, p in cases], scope="class")
        if "variant" in names:
            metafunc.parametrize("variant", plan.variants, ids=[f"{b}-{v}" for v in plan.variants], scope="class")
        if "precision" in names:
            precisions = plan.precisions
            if metafunc.function.__name__ in ("test_streaming", "test_streaming_moe"):
                wanted = DEFAULT_STREAMING_PRECISIONS if self.streaming_precisions is None else self.streaming_precisions
                precisions = [p for p in plan.precisions if p in wanted] or (
                    plan.precisions[:1] if self.streaming_precisions is None else [])
            metafunc.parametrize("precision", precisions, ids=[f"{b}-{p}" for p in precisions], scope="class")
        if "recipe" in names:
            recipes = list(KIT_RECIPES) if "int4" in plan.precisions else []
            metafunc.parametrize("recipe", recipes, ids=[f"{b}-{plan.first_variant}-int4-{r}" for r in recipes],
                                 scope="class")
        if "undeclared" in names:
            metafunc.parametrize("undeclared", plan.undeclared, ids=[f"{b}-{p}" for p in plan.undeclared],
                                 scope="class")

    @pytest.fixture(scope="class")
    @classmethod
    def kit(cls, request: Any, tmp_path_factory: Any) -> Any:
        plan = _plan(request.cls, request.config, request.module)
        if plan.error:
            pytest.fail(plan.error, pytrace=False)
        owner = request.cls()
        session = KitSession(plan.backend, tmp_path_factory.mktemp(f"kit-{plan.backend}"),
                             owner.export_options, owner.load_options, plan)
        yield session
        session.close()

    # -- declaration -----------------------------------------------------------------------------
    def test_backend_info(self, kit: KitSession, record_property: Any) -> None:
        backend = kit.backend
        info = backend.info
        problems = []
        if info.name != kit.backend_name:
            problems.append(f"backend_info().name is {info.name!r}, expected {kit.backend_name!r}")
        if str(info.hook_contract).split(".")[0] != HOOK_CONTRACT_VERSION.split(".")[0]:
            problems.append(f"hook_contract {info.hook_contract} has another major than {HOOK_CONTRACT_VERSION}")
        unknown = [a for a in info.architectures if a not in architecture_names()]
        if unknown:
            problems.append(f"architectures {unknown} are not ones phi-quant reads ({', '.join(architecture_names())})")
        if not info.format or not info.runtime:
            problems.append("backend_info() must name its output format and runtime")
        specs = kit.plan.declared
        names = [s.precision for s in specs]
        if not names:
            problems.append("supported_precisions() declares no precision")
        if len(set(names)) != len(names):
            problems.append(f"supported_precisions() lists a precision twice: {names}")
        problems += [f"precision {s.precision!r} is not one of {PRECISIONS}" for s in specs if s.precision not in PRECISIONS]
        problems += [f"precision {s.precision!r} declares no native scheme" for s in specs if not s.scheme]
        problems += [f"precision {s.precision!r} declares no FidelityThresholds" for s in specs if s.thresholds is None]
        record_property("result", f"{info.format} via {info.runtime}; architectures {', '.join(info.architectures)}; "
                                  f"precisions {', '.join(names)}")
        assert not problems, "; ".join(problems)

    # -- export, load, tokens, fidelity ----------------------------------------------------------
    def test_export(self, kit: KitSession, case: tuple[str, str], record_property: Any) -> None:
        variant, precision = case
        record = kit.export(variant, precision)
        if record.error is not None:
            pytest.fail(f"convert {variant} to {precision} failed: {_describe(record.error)}", pytrace=False)
        missing = [f for f in record.files if not (record.path / f).exists()]
        assert record.path.is_dir() and not missing, f"output lacks listed files: {missing}"
        strays = sorted(p.name for p in record.path.parent.iterdir() if p != record.path)
        assert not strays, f"export wrote outside its output directory: {strays[:5]}"
        size = sum(f.stat().st_size for f in record.path.rglob("*") if f.is_file())
        record_property("result", f"{len(record.files)} files, {size / 1e6:.1f} MB in {record.seconds:.1f} s")

    def test_progress(self, kit: KitSession, case: tuple[str, str], record_property: Any) -> None:
        record = kit.export(*case)
        kit.require_export(*case)
        assert record.progress_total > 0 and record.progress_done == record.progress_total, (
            f"export reported {record.progress_done} of {record.progress_total} source bytes through "
            f"progress.advance ({record.progress_items} calls); call progress.advance(t.nbytes, t.name) per source tensor"
        )
        record_property("result", f"{record.progress_done} bytes in {record.progress_items} calls")

    def test_load(self, kit: KitSession, case: tuple[str, str], record_property: Any) -> None:
        variant, precision = case
        model = kit.model(variant, precision)
        vocab = json.loads((kit.checkpoint(variant) / "config.json").read_text())["vocab_size"]
        ids = kit.prompt_ids(variant)[0]
        logits = np.asarray(model.logits(ids))
        assert logits.shape == (len(ids), vocab), f"logits shape {logits.shape}, expected {(len(ids), vocab)}"
        assert logits.dtype == np.float32, f"logits dtype {logits.dtype}, expected float32"
        assert np.isfinite(logits).all(), "logits hold NaN or Inf"
        text = model.generate(kit.prompts(variant)[0], max_new_tokens=4)
        assert isinstance(text, str), f"generate returned {type(text).__name__}, expected str"
        record_property("result", f"logits float32 {list(logits.shape)}; generated {text[:30]!r}")

    def test_tokenizer(self, kit: KitSession, case: tuple[str, str], record_property: Any) -> None:
        variant, precision = case
        model = kit.model(variant, precision)
        mismatches = []
        for i, (prompt, want) in enumerate(zip(kit.prompts(variant), kit.prompt_ids(variant))):
            got = [int(t) for t in model.tokenize(prompt)]
            if got != want:
                at = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                mismatches.append(f"prompt {i} ({prompt[:30]!r}...): first difference at token {at}: "
                                  f"got {got[at:at + 4]}, Hugging Face {want[at:at + 4]}")
        assert not mismatches, "; ".join(mismatches)
        ids = kit.prompt_ids(variant)
        record_property("result", f"same ids on {len(ids)} prompts ({sum(map(len, ids))} tokens)")

    def test_fidelity(self, kit: KitSession, case: tuple[str, str], record_property: Any) -> None:
        from .factory import variant_spec

        variant, precision = case
        spec = kit.plan.spec(precision)
        arch = variant_spec(variant).arch
        thr = spec.thresholds_for(arch) if spec is not None else None
        if thr is None:
            pytest.fail(f"backend declares no FidelityThresholds for {precision} ({arch})", pytrace=False)
        result = kit.fidelity(variant, precision)
        record_property("result", result.describe())
        problems = []
        if not result.kl_mean <= thr.kl_max:
            problems.append(f"KL mean {result.kl_mean:.3g} > declared {thr.kl_max:.3g}")
        if not result.top1 >= thr.top1_min:
            problems.append(f"top-1 agreement {result.top1:.4f} < declared {thr.top1_min:.4f}")
        if thr.max_abs_logit is not None and not result.max_abs_logit <= thr.max_abs_logit:
            problems.append(f"max |dlogit| {result.max_abs_logit:.3g} > declared {thr.max_abs_logit:.3g}")
        assert not problems, f"{variant}/{precision}: {'; '.join(problems)} ({result.describe()})"

    def test_kl_order(self, kit: KitSession, variant: str, record_property: Any) -> None:
        ordered = [p for p in KL_ORDER if p in kit.plan.precisions]
        if len(ordered) < 2:
            pytest.skip(f"fewer than two of {KL_ORDER} are checked")
        kl = {p: kit.fidelity(variant, p).kl_mean for p in ordered}
        rel, absolute = self.kl_order_tolerance
        record_property("result", ", ".join(f"{p} {kl[p]:.3g}" for p in ordered))
        bad = [f"KL({a})={kl[a]:.3g} > KL({b})={kl[b]:.3g}"
               for i, a in enumerate(ordered) for b in ordered[i + 1:] if kl[a] > kl[b] * (1 + rel) + absolute]
        assert not bad, f"{variant}: KL must not fall as precision drops: {'; '.join(bad)}"

    def test_quantize(self, kit: KitSession, precision: str, record_property: Any) -> None:
        from ..model.source import open_model

        variant = kit.plan.first_variant
        with open_model(kit.checkpoint(variant)) as src:
            tensor = _probe(src)
            qt = kit.backend.quantize(tensor, kit.options_for(variant, precision))
            assert isinstance(qt, QuantizedTensor)
            assert tuple(qt.shape) == tuple(tensor.shape), f"quantize kept shape {qt.shape}, source {tensor.shape}"
            assert qt.arrays, "quantize returned no arrays"
            if qt.dequantize is None:
                record_property("result", f"{qt.scheme}: no dequantize")
                return
            w = tensor.to_float32()
            d = np.asarray(qt.dequantize(), dtype=np.float32)
        assert d.shape == w.shape, f"dequantize returned shape {d.shape}, expected {w.shape}"
        assert np.isfinite(d).all(), "dequantize returned NaN or Inf"
        err = float(np.sqrt(np.mean((d - w) ** 2)) / max(np.sqrt(np.mean(w**2)), 1e-30))
        bound = self.quantize_error_bounds.get(precision, 0.25)
        record_property("result", f"{qt.scheme}: relative RMS error {err:.3g}")
        assert err <= bound, f"{qt.scheme}: dequantized relative RMS error {err:.3g} > {bound}"

    def test_hook_matches_export(self, kit: KitSession, case: tuple[str, str], record_property: Any) -> None:
        variant, precision = case
        if not _contract_at_least(kit.backend.info, 3):
            pytest.skip(f"hook contract {kit.backend.info.hook_contract} predates per-tensor digests (1.3)")
        record = kit.export(variant, precision)
        kit.require_export(variant, precision)
        checked = _check_hook_digests(kit, variant, record.path, kit.options_for(variant, precision))
        record_property("result", f"{checked} tensors: hook bytes == export bytes")

    def test_recipe(self, kit: KitSession, recipe: str, record_property: Any) -> None:
        variant, precision = kit.plan.first_variant, "int4"
        if not _contract_at_least(kit.backend.info, 3):
            pytest.skip(f"hook contract {kit.backend.info.hook_contract} predates recipes (1.3)")
        options = self.recipe_options(variant, precision, recipe)
        from ..calib import needs_calibration

        if needs_calibration(options) and not (_contract_at_least(kit.backend.info, 4)
                                               and kit.backend.implements("tensor_plan")):
            pytest.skip(f"calibrated recipes search against the backend's schemes: the tensor_plan hook "
                        f"(contract 1.4; this backend declares {kit.backend.info.hook_contract})")
        record = kit.export_with(f"recipe-{recipe}", variant, options)
        if record.error is not None:
            pytest.fail(f"convert {variant} int4 --recipe {recipe} failed: {_describe(record.error)}", pytrace=False)
        thr = kit.plan.spec(precision).thresholds
        result = kit.fidelity_of(record.path, variant, self.load_options(variant, precision))
        checked = _check_hook_digests(kit, variant, record.path, options)
        record_property("result", f"{result.describe()}; {checked} tensors: hook bytes == export bytes")
        assert result.kl_mean <= thr.kl_max and result.top1 >= thr.top1_min, (
            f"int4 --recipe {recipe}: {result.describe()} outside the declared int4 bounds (KL <= {thr.kl_max:.3g}, "
            f"top-1 >= {thr.top1_min:.3g})")

    # -- atomic output and bad inputs ------------------------------------------------------------
    def test_atomic_output(self, kit: KitSession, precision: str, monkeypatch: Any, record_property: Any) -> None:
        from .. import convert as convert_module
        from ..model.source import open_model

        variant = kit.plan.first_variant
        checkpoint = kit.checkpoint(variant)
        with open_model(checkpoint) as src:
            after = max(1, len(src.tensor_infos()) // 2)
        sources: list[FailingSource] = []
        real_open = convert_module.open_source

        def failing_open(model: Any) -> FailingSource:
            sources.append(FailingSource(real_open(model), after))
            return sources[-1]

        monkeypatch.setattr(convert_module, "open_source", failing_open)
        private_tmp = kit.workdir / f"tmpdir-atomic-{precision}"
        private_tmp.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
        monkeypatch.setenv("TMPDIR", str(private_tmp))
        out = kit.fresh_dir(f"atomic-{precision}")
        before = _listing(checkpoint)
        try:
            convert_module.convert(checkpoint, kit.backend_name, kit.options_for(variant, precision), out)
        except Exception as exc:  # noqa: BLE001 - any error is fine, as long as it came from the fault
            fired = any(isinstance(e, InjectedFailure) for e in _chain(exc)) or (sources and sources[0].yielded == after)
            if not fired:
                pytest.fail(f"convert failed before the injected fault ({_describe(exc)})", pytrace=False)
        else:
            pytest.fail(f"convert succeeded although the tensor stream failed after {after} tensors: the export "
                        "swallowed the error (or did not read source.tensors())", pytrace=False)
        problems = []
        if out.exists():
            problems.append(f"the destination exists: {_listing(out)[:5]}")
        if _listing(out.parent):
            problems.append(f"left next to the destination: {_listing(out.parent)[:5]}")
        if _listing(private_tmp):
            problems.append(f"left in the temporary directory: {_listing(private_tmp)[:5]}")
        if _listing(checkpoint) != before:
            problems.append("wrote into the source checkpoint")
        assert not problems, "after a failure mid-export: " + "; ".join(problems)
        record_property("result", f"failed after {after} tensors; nothing left behind")

    def _poisoned(self, kit: KitSession, kind: str, precision: str, record_property: Any) -> None:
        from ..convert import convert

        variant = kit.plan.first_variant
        path = kit.workdir / f"poisoned-{kind}-{variant}"
        if not path.exists():
            poison_checkpoint(kit.checkpoint(variant), path, self.poisoned_tensor, kind)
        out = kit.fresh_dir(f"poisoned-{kind}-{precision}")
        try:
            convert(path, kit.backend_name, kit.options_for(variant, precision), out)
        except BadWeightsError as exc:
            assert self.poisoned_tensor in str(exc), f"BadWeightsError must name {self.poisoned_tensor}: {exc}"
            record_property("result", f"BadWeightsError: {str(exc)[:80]}")
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"{kind.upper()} weights raised {_describe(exc)}, expected BadWeightsError", pytrace=False)
        else:
            pytest.fail(f"exported a checkpoint with {kind.upper()} in {self.poisoned_tensor} without complaint",
                        pytrace=False)
        assert not out.exists(), "a failed export left output behind"

    def test_rejects_nan_weights(self, kit: KitSession, precision: str, record_property: Any) -> None:
        self._poisoned(kit, "nan", precision, record_property)

    def test_rejects_inf_weights(self, kit: KitSession, precision: str, record_property: Any) -> None:
        self._poisoned(kit, "inf", precision, record_property)

    def test_refuses_undeclared_precision(self, kit: KitSession, undeclared: str) -> None:
        from ..model.source import open_model

        variant = kit.plan.first_variant
        options = ExportOptions(precision=undeclared)
        out = kit.workdir / f"undeclared-{undeclared}"
        out.mkdir()
        backend = kit.backend
        with open_model(kit.checkpoint(variant)) as src:
            calls = [("export", lambda: backend.export(src, out, options, NullProgress()))]
            if backend.implements("quantize"):
                calls.append(("quantize", lambda: backend.quantize(_probe(src), options)))
            for hook, call in calls:
                try:
                    call()
                except UnsupportedPrecisionError:
                    continue
                except Exception as exc:  # noqa: BLE001
                    pytest.fail(f"{hook} raised {_describe(exc)} for undeclared precision {undeclared!r}, "
                                "expected UnsupportedPrecisionError", pytrace=False)
                pytest.fail(f"{hook} accepted precision {undeclared!r}, which the backend does not declare",
                            pytrace=False)

    def test_refuses_existing_output(self, kit: KitSession) -> None:
        from ..convert import convert

        plan = kit.plan
        out = kit.fresh_dir("existing")
        out.mkdir()
        (out / "keep.txt").write_text("user data")
        with pytest.raises(OutputExistsError):
            convert(kit.checkpoint(plan.first_variant), kit.backend_name,
                    kit.options_for(plan.first_variant, plan.precisions[0]), out)
        assert _listing(out.parent) == ["out", "out/keep.txt"] and (out / "keep.txt").read_text() == "user data"

    # -- streaming ----------------------------------------------------------------------------------
    @pytest.mark.phi_quant_streaming
    def test_streaming(self, kit: KitSession, precision: str, request: Any, record_property: Any) -> None:
        from .kit_streaming import LARGE_BYTES, SMALL_BYTES, large_checkpoint

        self._streaming(kit, precision, request, record_property, "dense",
                        [large_checkpoint(SMALL_BYTES), large_checkpoint(LARGE_BYTES)], "layers")

    @pytest.mark.phi_quant_streaming
    def test_streaming_moe(self, kit: KitSession, precision: str, request: Any, record_property: Any) -> None:
        from .kit_streaming import MOE_EXPERTS, large_moe_checkpoint

        if not kit.backend.info.writes("phimoe"):
            pytest.skip(f"{kit.backend_name} does not write phimoe")
        self._streaming(kit, precision, request, record_property, "moe",
                        [large_moe_checkpoint(n) for n in MOE_EXPERTS], "experts")

    def _streaming(self, kit: KitSession, precision: str, request: Any, record_property: Any, kind: str,
                   checkpoints: list[Path], growing: str) -> None:
        from .kit_streaming import measure_conversion_rss

        if _option(request.config, "phi_quant_skip_streaming") or not _ini(request.config, "phi_quant_streaming", True):
            pytest.skip("streaming check turned off (--phi-quant-skip-streaming)")
        options = kit.options_for(kit.plan.first_variant, precision)
        peaks, sizes = [], []
        for i, checkpoint in enumerate(checkpoints):
            peak, size, error = measure_conversion_rss(kit.backend_name, options,
                                                       kit.workdir / f"streaming-{kind}-{precision}-{i}",
                                                       checkpoint=checkpoint)
            if error:
                pytest.fail(f"converting the generated {size:.0f} MiB checkpoint failed: {error}", pytrace=False)
            peaks.append(peak)
            sizes.append(size)
        growth, allowed = peaks[1] - peaks[0], max(32.0, self.rss_growth_fraction * (sizes[1] - sizes[0]))
        record_property("result", f"peak RSS {peaks[0]:.0f} MiB converting {sizes[0]:.0f} MiB, {peaks[1]:.0f} MiB "
                                  f"converting {sizes[1]:.0f} MiB (bound {self.rss_limit_mb:.0f} MiB)")
        problems = []
        if peaks[1] > self.rss_limit_mb:
            problems.append(f"peak RSS {peaks[1]:.0f} MiB > {self.rss_limit_mb:.0f} MiB converting {sizes[1]:.0f} MiB")
        if growth > allowed:
            problems.append(f"peak RSS grew by {growth:.0f} MiB (allowed {allowed:.0f}) from a {sizes[0]:.0f} to a "
                            f"{sizes[1]:.0f} MiB checkpoint with the same tensor shapes and more {growing}")
        assert not problems, "; ".join(problems) + (
            ": export must read one tensor at a time and write it before reading the next, keeping nothing")
