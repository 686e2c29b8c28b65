"""Find backends, keep broken ones from breaking the rest, and call them through typed methods.

Backends are pluggy plugins announced by installed distributions under the entry-point group
``phi_quant`` (``[project.entry-points.phi_quant] NAME = "package.module"``). Entry points load
lazily, on the first question about backends, and each one inside its own ``try``: a plugin that
fails to import, registers hooks that match no spec, raises in ``backend_info`` or was built for
another major version of the hook contract is recorded as a :class:`PluginFailure` and skipped,
and every other backend keeps working.

``PHI_QUANT_PLUGINS`` restricts what loads: a comma-separated list of entry-point or distribution
names (``PHI_QUANT_PLUGINS=llamacpp,phi-quant-onnx``); set but empty, nothing loads.

Core code never calls ``pm.hook.*``: it asks :func:`get_manager` for a :class:`Backend` and calls
one typed method per hook, which runs only that backend's implementation and turns an unexpected
exception from plugin code into a :class:`~phi_quant.errors.PluginError` naming the plugin.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pluggy

from .errors import (
    BackendNotInstalledError,
    PhiQuantError,
    PluginError,
    ResourceError,
    UnsupportedPrecisionError,
    os_error,
    resource_errno,
)
from .hookspecs import PROJECT_NAME, PhiQuantSpec
from .vendor_telemetry import disable_vendor_telemetry
from .types import (
    HOOK_CONTRACT_VERSION,
    BackendInfo,
    ExportOptions,
    ExportResult,
    HardwareReport,
    LoadedModel,
    NullProgress,
    PrecisionSpec,
    Progress,
    QuantizedTensor,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ALLOW_LIST_ENV",
    "KNOWN_BACKENDS",
    "PluginFailure",
    "Backend",
    "PhiQuant",
    "get_manager",
    "reset_manager",
    "register_plugin",
    "unregister_plugin",
    "registered_plugin",
]

ENTRY_POINT_GROUP = PROJECT_NAME
ALLOW_LIST_ENV = "PHI_QUANT_PLUGINS"

#: Backends published from this repository: CLI name -> distribution to ``pip install``.
KNOWN_BACKENDS = {
    "llamacpp": "phi-quant-llamacpp",
    "onnx": "phi-quant-onnx",
    "openvino": "phi-quant-openvino",
    "mlx": "phi-quant-mlx",
    "reference": "phi-quant-reference",
}


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be used, and why (shown by ``phi-quant plugins``)."""

    name: str  # entry-point (or registration) name
    distribution: str  # "" for in-process registrations
    error: str

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def _major(version: str) -> str:
    return str(version).split(".", 1)[0].strip()


class Backend:
    """One loaded backend; each method calls only this plugin's implementation of one hook."""

    def __init__(self, plugin: object, plugin_name: str, pm: pluggy.PluginManager, info: BackendInfo):
        self._plugin = plugin
        self._plugin_name = plugin_name
        self._pm = pm
        self.info = info

    @property
    def name(self) -> str:
        return self.info.name

    def __repr__(self) -> str:
        return f"<Backend {self.name} ({self.info.distribution or 'in-process'} {self.info.version})>"

    def implements(self, hook: str) -> bool:
        return self._impl(hook) is not None

    def _impl(self, hook: str) -> pluggy.HookImpl | None:
        caller = getattr(self._pm.hook, hook, None)
        if caller is None:
            return None
        for impl in caller.get_hookimpls():
            if impl.plugin is self._plugin and not (impl.wrapper or impl.hookwrapper):
                return impl
        return None

    def _call(self, hook: str, expected: type | tuple[type, ...] | None, **kwargs: Any) -> Any:
        impl = self._impl(hook)
        if impl is None:
            raise PluginError(self.name, f"does not implement the {hook!r} hook")
        args = [kwargs[a] for a in impl.argnames]
        # parameters with a default (``source=None``) are pluggy's kwargnames: pass them too
        optional = {a: kwargs[a] for a in getattr(impl, "kwargnames", ()) if a in kwargs}
        try:
            result = impl.function(*args, **optional)
        except (PhiQuantError, KeyboardInterrupt):
            raise
        except MemoryError as exc:
            raise ResourceError(f"backend {self.name!r} ran out of memory in {hook}; close other programs or use a "
                                "machine with more memory") from exc
        except BaseException as exc:  # noqa: BLE001 - SystemExit from plugin code must not end phi-quant
            code = resource_errno(exc)
            if code is not None:  # a full disk or a limit, whatever type the vendor's writer wraps it in
                raise os_error(OSError(code, os.strerror(code)), f"backend {self.name!r} {hook}") from exc
            raise PluginError(self.name, f"{hook} failed: {type(exc).__name__}: {exc}") from exc
        if expected is not None and not isinstance(result, expected):
            raise PluginError(
                self.name, f"{hook} returned {type(result).__name__}, expected {_type_names(expected)}"
            )
        return result

    def precisions(self) -> list[PrecisionSpec]:
        """The precisions this backend exports (``supported_precisions`` hook)."""
        specs = self._call("supported_precisions", list)
        for s in specs:
            if not isinstance(s, PrecisionSpec):
                raise PluginError(self.name, f"supported_precisions returned a {type(s).__name__}, expected PrecisionSpec")
        return specs

    def precision(self, precision: str) -> PrecisionSpec:
        """The spec for one precision, or :class:`UnsupportedPrecisionError` listing what is offered."""
        specs = self.precisions()
        for s in specs:
            if s.precision == precision:
                return s
        offered = ", ".join(s.precision for s in specs) or "none"
        raise UnsupportedPrecisionError(
            f"backend {self.name!r} does not offer precision {precision!r}; it offers: {offered}"
        )

    def detect_hardware(self) -> HardwareReport:
        """What this backend's runtime can use on this machine."""
        return self._call("detect_hardware", HardwareReport)

    def quantize(self, tensor: Any, options: ExportOptions, source: Any = None) -> QuantizedTensor:
        """Quantize one source tensor to this backend's layout (``source``: its checkpoint, for the plan).

        A recipe that needs calibration (``awq``, ``gptq``, ...) is given the calibrated view of
        ``source`` and of ``tensor`` (:func:`phi_quant.calib.calibrated_source`), exactly what
        ``convert`` hands ``export``, so the hook's bytes are the export's.
        """
        from .calib import calibrated_source, needs_calibration

        if needs_calibration(options):
            if source is None:
                raise UnsupportedPrecisionError(
                    f"recipe {options.recipe} calibrates on the whole checkpoint: pass the tensor's source to quantize")
            calibrated = calibrated_source(source, self, options)
            if calibrated is not source:
                tensor, source = calibrated.wrap(tensor), calibrated
        return self._call("quantize", QuantizedTensor, tensor=tensor, options=options, source=source)

    def tensor_plan(self, source: Any, options: ExportOptions) -> Any:
        """The backend's per-tensor plan for ``source`` (``tensor_plan`` hook), or None when it has none."""
        from .quant.plan import TensorPlan

        if not self.implements("tensor_plan"):
            return None
        return self._call("tensor_plan", TensorPlan, source=source, options=options)

    def export(self, source: Any, output_dir: Path, options: ExportOptions, progress: Progress | None = None) -> ExportResult:
        """Write ``source`` into the (empty) ``output_dir`` in this backend's format."""
        return self._call(
            "export", ExportResult, source=source, output_dir=Path(output_dir), options=options,
            progress=progress or NullProgress(),
        )

    def load_model(self, path: Path, options: dict[str, Any] | None = None) -> LoadedModel:
        """Open an exported directory in the vendor runtime."""
        model = self._call("load_model", None, path=Path(path), options=dict(options or {}))
        missing = [m for m in ("tokenize", "detokenize", "logits", "generate", "close") if not callable(getattr(model, m, None))]
        if missing:
            raise PluginError(self.name, f"load_model returned an object without {', '.join(missing)}")
        return model


def _architectures(plugin: str, declared: Any) -> tuple[str, ...]:
    """``BackendInfo.architectures`` as a tuple of names; one name alone is accepted, none is refused."""
    names = (declared,) if isinstance(declared, str) else tuple(declared or ())
    if not names or not all(isinstance(n, str) and n for n in names):
        raise PluginError(plugin, f"backend_info declares no architecture it writes (architectures={declared!r}); "
                                  "declare e.g. architectures=(\"phi3\",)")
    return names


def _type_names(t: type | tuple[type, ...]) -> str:
    return " or ".join(x.__name__ for x in (t if isinstance(t, tuple) else (t,)))


def _allow_list(env: dict[str, str] | None = None) -> set[str] | None:
    raw = (os.environ if env is None else env).get(ALLOW_LIST_ENV)
    if raw is None:
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-")


class PhiQuant:
    """The plugin manager facade: discovery, isolation of failures, lookup by backend name."""

    def __init__(self, *, load_entry_points: bool = True, env: dict[str, str] | None = None):
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(PhiQuantSpec)
        self._load_entry_points = load_entry_points
        self._allow = _allow_list(env)
        self._entry_points_done: set[str] = set()
        self._all_loaded = False
        self._backends: dict[str, Backend] = {}
        self._failures: list[PluginFailure] = []

    # -- discovery -----------------------------------------------------------------------
    def _entry_points(self) -> list[metadata.EntryPoint]:
        """Entry points in discovery order, except that the distribution this repository publishes
        for a known backend name loads before any other claiming that name (so it is the one kept)."""
        eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        if self._allow is not None:
            allowed = {_normalise(a) for a in self._allow}
            eps = [
                ep for ep in eps
                if _normalise(ep.name) in allowed or (ep.dist is not None and _normalise(ep.dist.name) in allowed)
            ]

        def owner_first(ep: metadata.EntryPoint) -> int:
            known = KNOWN_BACKENDS.get(ep.name)
            return 0 if known and ep.dist is not None and _normalise(ep.dist.name) == known else 1

        return sorted(eps, key=owner_first)

    def _load(self, only: str | None = None) -> None:
        if not self._load_entry_points or self._all_loaded:
            return
        disable_vendor_telemetry()  # before a plugin can import its vendor's package
        seen: set[str] = set()
        for ep in self._entry_points():
            key = f"{ep.name}={ep.value}"
            if key in self._entry_points_done or key in seen:
                continue
            seen.add(key)
            if only is not None and ep.name != only:
                continue
            self._entry_points_done.add(key)
            dist = ep.dist.name if ep.dist is not None else ""
            version = ep.dist.version if ep.dist is not None else ""
            try:
                plugin = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - isolate every broken plugin, sys.exit() at import included
                self._fail(ep.name, dist, f"could not be imported: {type(exc).__name__}: {exc}")
                continue
            self._add(plugin, ep.name, dist, version)
        if only is None:
            self._all_loaded = True

    def _fail(self, name: str, distribution: str, error: str) -> None:
        self._failures.append(PluginFailure(name, distribution, error))

    def _add(self, plugin: object, name: str, distribution: str = "", version: str = "") -> Backend | None:
        """Register one plugin; on any problem record a failure and leave the manager as it was."""
        if self.pm.get_plugin(name) is not None or name in self._backends:
            self._fail(name, distribution, f"the plugin name {name!r} is already taken by "
                       f"{self._owner(name)}; this one was not loaded. Uninstall one of the two")
            return None
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - pluggy validation errors and anything else
            self._fail(name, distribution, f"could not be registered: {exc}")
            return None
        try:
            self._check_pending(plugin)
            info = self._info(plugin, name, distribution, version)
        except PluginError as exc:
            self.pm.unregister(plugin)
            self._fail(name, distribution, str(exc).split(": ", 1)[-1])
            return None
        if info.name in self._backends:
            self.pm.unregister(plugin)
            self._fail(name, distribution, f"backend name {info.name!r} is already provided by "
                       f"{self._owner(info.name)} (kept); this one was not loaded. Uninstall one of the two")
            return None
        backend = Backend(plugin, name, self.pm, info)
        self._backends[info.name] = backend
        return backend

    def _owner(self, name: str) -> str:
        """Who holds backend or plugin name ``name``: "phi-quant-onnx 0.1.0" or "an in-process plugin"."""
        backend = self._backends.get(name) or next((b for b in self._backends.values() if b._plugin_name == name), None)
        if backend is None or not backend.info.distribution:
            return "an in-process plugin"
        return " ".join(x for x in (backend.info.distribution, backend.info.version) if x)

    def _check_pending(self, plugin: object) -> None:
        """Refuse hook implementations that match no spec (a typo would otherwise be silent)."""
        for hook_name in dir(self.pm.hook):
            caller = getattr(self.pm.hook, hook_name)
            if not isinstance(caller, pluggy.HookCaller) or caller.spec is not None:
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not impl.optionalhook:
                    raise PluginError(self.pm.get_name(plugin) or "?", f"implements unknown hook {hook_name!r}")

    def _info(self, plugin: object, name: str, distribution: str, version: str) -> BackendInfo:
        probe = Backend(plugin, name, self.pm, BackendInfo(name=name, format="?", runtime="?"))
        info = probe._call("backend_info", BackendInfo)
        if _major(info.hook_contract) != _major(HOOK_CONTRACT_VERSION):
            raise PluginError(
                name,
                f"was built for hook contract {info.hook_contract}, this phi-quant speaks "
                f"{HOOK_CONTRACT_VERSION}; upgrade the plugin or phi-quant so the major versions match",
            )
        if not info.name:
            raise PluginError(name, "backend_info returned an empty backend name")
        return dataclasses.replace(
            info,
            architectures=_architectures(name, info.architectures),
            distribution=info.distribution or distribution,
            version=info.version or version,
            install_hint=info.install_hint or (f"pip install {distribution}" if distribution else ""),
        )

    def check_pending(self) -> None:
        """Raise if any registered plugin implements a hook that has no spec (pluggy's check)."""
        self.pm.check_pending()

    # -- registration for built-ins and tests ---------------------------------------------
    def register(self, plugin: object, name: str | None = None, *, distribution: str = "", version: str = "") -> Backend:
        """Register an in-process plugin (a module or object with hookimpls) like an entry point."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        before = len(self._failures)
        backend = self._add(plugin, name, distribution, version)
        if backend is None:
            failure = self._failures.pop() if len(self._failures) > before else None
            raise PluginError(name, failure.error if failure else "could not be registered")
        return backend

    def unregister(self, name: str) -> None:
        """Remove a backend (by backend or plugin name) registered with :meth:`register`."""
        for key, b in list(self._backends.items()):
            if key == name or b._plugin_name == name:
                del self._backends[key]
                if self.pm.is_registered(b._plugin):
                    self.pm.unregister(b._plugin)

    # -- questions ------------------------------------------------------------------------
    def backends(self) -> list[Backend]:
        """Every working backend, sorted by name."""
        self._load()
        return [self._backends[k] for k in sorted(self._backends)]

    def names(self) -> list[str]:
        return [b.name for b in self.backends()]

    def failures(self) -> list[PluginFailure]:
        """Plugins that failed to load, register or describe themselves."""
        self._load()
        return list(self._failures)

    def get(self, name: str) -> Backend:
        """The backend called ``name``; a clear error saying what to install when it is missing."""
        if name in self._backends:
            return self._backends[name]
        self._load(only=name)
        if name not in self._backends:
            self._load()
        if name in self._backends:
            return self._backends[name]
        for f in self._failures:
            if f.name == name:
                hint = ""
                if f.error.startswith("could not be imported") and f.distribution:
                    hint = f" (try: pip install --force-reinstall {f.distribution})"
                raise PluginError(name, f"{f.error}{hint}")
        installed = ", ".join(sorted(self._backends)) or "none"
        allow = ""
        if self._allow is not None:
            allow = f" ({ALLOW_LIST_ENV}={','.join(sorted(self._allow))} limits which plugins load)"
        if name in KNOWN_BACKENDS:
            raise BackendNotInstalledError(
                f"backend {name!r} is not installed{allow}. Install it with: pip install {KNOWN_BACKENDS[name]} "
                f"(installed backends: {installed})"
            )
        raise BackendNotInstalledError(
            f"unknown backend {name!r}{allow}; installed backends: {installed}. "
            f"Known backends: {', '.join(f'{k} (pip install {v})' for k, v in KNOWN_BACKENDS.items())}"
        )

    def detect_hardware(self) -> dict[str, HardwareReport | PluginError]:
        """``detect_hardware`` on every backend; a failing one yields its error, not an exception."""
        out: dict[str, HardwareReport | PluginError] = {}
        for b in self.backends():
            try:
                out[b.name] = b.detect_hardware()
            except PhiQuantError as exc:
                out[b.name] = exc if isinstance(exc, PluginError) else PluginError(b.name, str(exc))
        return out


_MANAGER: PhiQuant | None = None


def get_manager() -> PhiQuant:
    """The process-wide manager (entry points load on its first question)."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = PhiQuant()
    return _MANAGER


def reset_manager(manager: PhiQuant | None = None) -> PhiQuant | None:
    """Replace the process-wide manager (``None``: rediscover on next use); returns the old one."""
    global _MANAGER
    old, _MANAGER = _MANAGER, manager
    return old


def register_plugin(plugin: object, name: str | None = None, **kw: str) -> Backend:
    """Register an in-process plugin with the process-wide manager (tests, embedding apps)."""
    return get_manager().register(plugin, name, **kw)


def unregister_plugin(name: str) -> None:
    get_manager().unregister(name)


@contextmanager
def registered_plugin(plugin: object, name: str | None = None, **kw: str) -> Iterator[Backend]:
    """Register a plugin for the duration of a ``with`` block; always unregistered afterwards."""
    backend = register_plugin(plugin, name, **kw)
    try:
        yield backend
    finally:
        unregister_plugin(backend.name)
