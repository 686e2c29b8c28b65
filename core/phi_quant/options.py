"""Every export option checked up front, by what the receiving backend declares.

The core options (``--group-size``, ``--symmetric``, ``--context-length``, ``--target``,
``--threads``, ...) are described once in :data:`CORE_OPTIONS`: their type and range, and for
some, which backend declaration bounds them (a precision's ``group_sizes``, the backend's
``targets``). Backend options (``--option NAME=VALUE``) are checked against the backend's
:class:`~phi_quant.types.OptionSpec` list: an unknown name is refused with the list of known
ones, a value of the wrong type or out of range is refused, and the value reaches the backend
converted to its declared kind. A backend that declares nothing (hook contract 1.0) keeps
checking its own ``extra``. Nothing here reads a tensor: refusals come before any work.

Adding a core option (``--recipe``, ``--bits-per-weight``, ...) is one :class:`CoreOption` entry.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from .errors import BadInputError, UnsupportedPrecisionError
from .types import PRECISIONS, BackendInfo, ExportOptions, OptionSpec, PrecisionSpec

__all__ = ["CoreOption", "CORE_OPTIONS", "check_options", "check_options_for_model", "check_runtime_options",
           "coerce_option", "MAX_CONTEXT", "MAX_THREADS"]

MAX_CONTEXT = 1 << 24
MAX_THREADS = 1024


@dataclass(frozen=True)
class CoreOption:
    """One field of :class:`~phi_quant.types.ExportOptions` as the CLI spells it, with its bounds.

    ``declared`` reads the backend's declaration that bounds this option (a tuple of accepted
    values, ``()`` for "does not apply", ``None`` for "not declared") from the backend info and
    the precision spec; ``why`` says in the refusal where the declaration comes from.
    """

    field: str
    flag: str
    kind: str  # "int" | "float" | "bool" | "str"
    min: float | None = None
    max: float | None = None
    declared: Callable[[BackendInfo, PrecisionSpec], tuple[Any, ...] | None] | None = None
    show: Callable[[Any], str] = str


def _symmetry(value: Any) -> str:
    return "--symmetric" if value else "--asymmetric"


CORE_OPTIONS: tuple[CoreOption, ...] = (
    CoreOption("group_size", "--group-size", "int", min=1, max=1 << 20, declared=lambda info, spec: spec.group_sizes),
    CoreOption("symmetric", "--symmetric/--asymmetric", "bool", declared=lambda info, spec: spec.symmetric,
               show=_symmetry),
    CoreOption("scheme", "--scheme", "str"),
    CoreOption("context_length", "--context-length", "int", min=1, max=MAX_CONTEXT),
    CoreOption("target", "--target", "str", declared=lambda info, spec: info.targets),
    CoreOption("threads", "--threads", "int", min=1, max=MAX_THREADS),
    CoreOption("recipe", "--recipe", "str"),
    CoreOption("bits_per_weight", "--bits-per-weight", "float"),
    CoreOption("policy", "--policy", "str"),
)


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "int":
        return type(value) is int
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    return True


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" from {_num(lo)} to {_num(hi)}"
    if lo is not None:
        return f" of at least {_num(lo)}"
    return f" of at most {_num(hi)}" if hi is not None else ""


_KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}


def _check_core(option: CoreOption, value: Any, info: BackendInfo, spec: PrecisionSpec) -> Any:
    if option.field == "target" and isinstance(value, str):
        value = value.lower()
    accepted = option.declared(info, spec) if option.declared else None
    if accepted and _type_ok(option.kind, value) and value in accepted:
        return value  # a declared value (openvino's group size -1) needs no generic range
    if not _type_ok(option.kind, value) or (option.min is not None and value < option.min) or (
            option.max is not None and value > option.max):
        raise BadInputError(f"{option.flag} must be {_KIND_NAMES[option.kind]}{_range_text(option.min, option.max)}, "
                            f"got {value!r}")
    if accepted is None:
        return value
    where = f"{info.name} {spec.precision}" if option.field in ("group_size", "symmetric") else info.name
    if not accepted:
        raise UnsupportedPrecisionError(f"{option.flag} does not apply to {where}; drop it")
    raise UnsupportedPrecisionError(
        f"{option.flag} {option.show(value)} is not accepted by {where}; choose one of: "
        f"{', '.join(option.show(v) for v in accepted)}"
    )


def coerce_option(option: OptionSpec, value: Any, backend: str) -> Any:
    """``value`` of ``--option NAME=VALUE`` converted to the declared kind, or a refusal naming the option."""
    shown = f"--option {option.name}={value!r}"
    kind = option.kind
    if kind == "bool" and type(value) is int and value in (0, 1):
        value = bool(value)
    elif kind == "float" and type(value) is int:
        value = float(value)
    elif kind == "str" and isinstance(value, (bool, int, float)):
        value = str(value).lower() if isinstance(value, bool) else str(value)
    if not _type_ok(kind, value):
        raise UnsupportedPrecisionError(f"{shown} for {backend}: expected {_KIND_NAMES.get(kind, kind)}")
    if option.choices:
        for choice in option.choices:
            if choice == value or (isinstance(choice, str) and isinstance(value, str) and choice.lower() == value.lower()):
                return choice
        raise UnsupportedPrecisionError(
            f"{shown} for {backend}: choose one of {', '.join(str(c) for c in option.choices)}")
    if kind in ("int", "float") and ((option.min is not None and value < option.min) or
                                     (option.max is not None and value > option.max)):
        raise UnsupportedPrecisionError(
            f"{shown} for {backend}: must be{_range_text(option.min, option.max)}")
    return value


def _check_extra(info: BackendInfo, precision: str, extra: dict[str, Any]) -> dict[str, Any]:
    if info.options is None:
        return dict(extra)
    known = {o.name: o for o in info.options}
    unknown = sorted(set(extra) - set(known))
    if unknown:
        offered = ", ".join(sorted(known)) if known else "none (it takes no --option)"
        raise UnsupportedPrecisionError(
            f"backend {info.name!r} has no option {', '.join(repr(u) for u in unknown)}; its options: {offered}"
        )
    out = {}
    for name, value in extra.items():
        option = known[name]
        if option.precisions and precision not in option.precisions:
            raise UnsupportedPrecisionError(
                f"--option {name} applies to {info.name} {', '.join(option.precisions)} only, not {precision}; drop it"
            )
        out[name] = coerce_option(option, value, info.name)
    return out


def _minor(version: str) -> int:
    try:
        return int(str(version).split(".")[1])
    except (IndexError, ValueError):
        return 0


def _check_values(info: BackendInfo, options: ExportOptions) -> None:
    """The recipe is known, the size budget and policy are ones a backend could meet, the calibration
    options go with a calibrated recipe, and the backend speaks contract 1.3 (which carries them)
    when any of them is asked for."""
    from .calib import check_calibration_options
    from .quant.budget import check_budget_options
    from .quant.recipes import get_recipe

    get_recipe(options.recipe)  # an unknown name is refused with the list of recipes
    check_budget_options(options)
    check_calibration_options(options)
    asked = [flag for flag, value in (("--recipe", options.recipe not in (None, "rtn") and options.recipe),
                                      ("--bits-per-weight", options.bits_per_weight),
                                      ("--policy", options.policy not in (None, "default") and options.policy)) if value]
    if asked and _minor(info.hook_contract) < 3:
        raise UnsupportedPrecisionError(
            f"backend {info.name!r} was built for hook contract {info.hook_contract}, before {', '.join(asked)} "
            "existed (1.3); upgrade the plugin or drop the option")


def check_options(backend: Any, options: ExportOptions) -> ExportOptions:
    """Refuse what ``backend`` cannot do with ``options`` before any work; return the options normalised.

    ``backend`` is a :class:`~phi_quant.plugins.Backend` (its ``info`` and ``precision()``).
    """
    if options.precision not in PRECISIONS:
        raise UnsupportedPrecisionError(
            f"unknown precision {options.precision!r}; phi-quant knows: {', '.join(PRECISIONS)}"
        )
    info: BackendInfo = backend.info
    spec: PrecisionSpec = backend.precision(options.precision)
    if options.scheme and spec.schemes and options.scheme not in (spec.scheme, *spec.schemes):
        raise UnsupportedPrecisionError(
            f"backend {backend.name!r} has no scheme {options.scheme!r} for {options.precision}; "
            f"choose one of: {', '.join((spec.scheme, *spec.schemes))}"
        )
    changes: dict[str, Any] = {}
    for option in CORE_OPTIONS:
        value = getattr(options, option.field)
        if value is not None:
            checked = _check_core(option, value, info, spec)
            if checked != value:
                changes[option.field] = checked
    _check_values(info, options)
    extra = _check_extra(info, options.precision, dict(options.extra or {}))
    if extra != options.extra:
        changes["extra"] = extra
    return dataclasses.replace(options, **changes) if changes else options


def check_options_for_model(backend: Any, options: ExportOptions, config: Any) -> ExportOptions:
    """The checks that need the model: a context the model cannot hold is refused."""
    ctx = options.context_length
    limit = getattr(config, "max_position_embeddings", None)
    if ctx is not None and limit and ctx > limit:
        raise BadInputError(
            f"--context-length {ctx} is more than this model supports (max_position_embeddings {limit}); "
            f"choose at most {limit}"
        )
    return options


def check_runtime_options(*, context_length: int | None = None, threads: int | None = None,
                          **counts: int | None) -> None:
    """``run``/``eval`` options: context and threads in range, and every count (``max_tokens=...``) >= 0."""
    for flag, value, lo, hi in (("--context-length", context_length, 1, MAX_CONTEXT), ("--threads", threads, 1, MAX_THREADS)):
        if value is not None and not (type(value) is int and lo <= value <= hi):
            raise BadInputError(f"{flag} must be an integer from {lo} to {hi}, got {value!r}")
    for name, value in counts.items():
        if value is not None and (type(value) is not int or value < 0):
            raise BadInputError(f"--{name.replace('_', '-')} must be a whole number >= 0, got {value!r}")
