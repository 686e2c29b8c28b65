"""Which weight mode each tensor gets: the export options turned into a per-tensor plan.

The rules follow NNCF's ``compress_weights`` so an IR we write matches what optimum-cli would
produce for the same settings: int8 compresses every matmul weight (INT8_ASYM per output channel
unless symmetric is asked for); int4 compresses the decoder matmuls group-wise and keeps the
embeddings and the last matmul (lm_head) at the int8 backup unless ``all_layers`` is set; a ratio
below 1 keeps the most sensitive layers at the backup too. Where NNCF (and optimum-cli) refuse a
group size that does not divide a layer's input size, we pick a smaller dividing group or keep
that layer at int8, and record why in :attr:`WeightPlan.notes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.model.tensors import TensorInfo, TensorRole
from phi_quant.quant.scheme import Scheme
from phi_quant.types import ExportOptions

from . import constants as C

__all__ = ["TensorScheme", "WeightPlan", "PRESETS", "resolve_options", "plan_weights", "fit_group", "ResolvedOptions",
           "core_scheme"]

#: Named presets: (mode, group size or None for per-channel). NPUs want symmetric int4.
PRESETS = {
    "npu": (C.INT4_SYM, None),
    "npu-g128": (C.INT4_SYM, 128),
    "cpu": (C.INT4_ASYM, 128),
    "gpu": (C.INT4_SYM, 128),
}

_SMALLEST_GROUP = 16
_LARGEST_GROUP = 256


@dataclass(frozen=True)
class TensorScheme:
    """How one tensor is stored: a float type or an NNCF integer mode with its group size."""

    mode: str  # fp32 | fp16 | int8_asym | int8_sym | int4_asym | int4_sym
    group_size: int | None = None  # None: one scale per output channel

    @property
    def is_int(self) -> bool:
        return self.mode in C.INT_MODES

    @property
    def label(self) -> str:
        if not self.is_int:
            return self.mode
        return f"{self.mode}_g{self.group_size}" if self.group_size else f"{self.mode}_cw"


def core_scheme(scheme: TensorScheme) -> Scheme:
    """The core's description: a float copy, or the kernel's NNCF layout with f16 scales."""
    if not scheme.is_int:
        return Scheme.keep_float("f16" if scheme.mode == C.FP16 else "f32", scheme.mode)
    return Scheme.nncf(C.BITS[scheme.mode], scheme.mode.endswith("_sym"), scheme.group_size, "f16")


@dataclass(frozen=True)
class ResolvedOptions:
    """The export options after defaults and presets: what the user gets."""

    precision: str
    primary: TensorScheme  # the scheme for decoder matmuls
    backup: TensorScheme  # for embeddings / lm_head and layers the ratio leaves out
    ratio: float
    all_layers: bool
    preset: str | None

    @property
    def scheme_name(self) -> str:
        name = self.primary.label
        if self.primary.mode in (C.INT4_ASYM, C.INT4_SYM):
            if not self.all_layers:
                name += f"+{self.backup.label}-emb"
            if self.ratio < 1.0:
                name += f"-r{self.ratio:g}"
        return name


@dataclass
class WeightPlan:
    """The scheme of every 2-D tensor, keyed by tensor name, plus what the user should know."""

    schemes: dict[str, TensorScheme]
    options: ResolvedOptions
    notes: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # why a tensor left the rule (policy, budget)

    def scheme(self, name: str) -> TensorScheme:
        return self.schemes[name]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.schemes.values():
            out[s.label] = out.get(s.label, 0) + 1
        return out


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def resolve_options(options: ExportOptions) -> ResolvedOptions:
    """Apply defaults and presets; refuse what the OpenVINO backend cannot write."""
    precision = options.precision
    preset = options.get("preset") or (options.target.lower() if options.target and options.target.lower() == "npu" else None)
    if preset is not None and preset not in PRESETS:
        raise UnsupportedPrecisionError(f"unknown OpenVINO preset {preset!r}; choose one of {', '.join(PRESETS)}")
    ratio = float(options.get("ratio", C.DEFAULT_RATIO))
    if not 0.0 < ratio <= 1.0:
        raise UnsupportedPrecisionError(f"ratio must be in (0, 1], got {ratio}; it is the share of int4 layers")
    all_layers = _truthy(options.get("all_layers", False))
    gs = options.group_size
    if gs is not None and gs != -1 and (gs < _SMALLEST_GROUP or gs > _LARGEST_GROUP or gs & (gs - 1)):
        raise UnsupportedPrecisionError(
            f"group size {gs} is not supported: use a power of two from {_SMALLEST_GROUP} to {_LARGEST_GROUP}, "
            "or -1 for one scale per output channel"
        )
    group = None if gs == -1 else gs
    if options.scheme:
        raise UnsupportedPrecisionError(
            "the OpenVINO backend has no --scheme; use --group-size, --symmetric and "
            "--option ratio=/all_layers=/preset= (see docs/backends/openvino.md)"
        )

    if preset and precision in (C.FP32, C.FP16, "int8"):
        raise UnsupportedPrecisionError(f"preset {preset!r} is an int4 preset; use --precision int4")
    if precision in (C.FP32, C.FP16):
        s = TensorScheme(precision)
        return ResolvedOptions(precision, s, s, 1.0, True, None)
    if precision == "int8":
        mode = C.INT8_SYM if options.symmetric else C.INT8_ASYM
        if group is not None:
            raise UnsupportedPrecisionError(
                "OpenVINO int8 is per output channel (NNCF's int8 modes take no group size); drop --group-size"
            )
        s = TensorScheme(mode)
        return ResolvedOptions(precision, s, s, 1.0, True, None)
    if precision == "int4":
        if preset:
            mode, pgroup = PRESETS[preset]
            if options.symmetric is False and mode == C.INT4_SYM:
                raise UnsupportedPrecisionError(f"preset {preset!r} is symmetric; drop --asymmetric or the preset")
            group = group if gs is not None else pgroup
        else:
            mode = C.INT4_SYM if options.symmetric else C.INT4_ASYM
            group = group if gs is not None else C.DEFAULT_INT4_GROUP
        backup_mode = options.get("backup", C.INT8_ASYM)
        if backup_mode not in (C.INT8_ASYM, C.INT8_SYM):
            raise UnsupportedPrecisionError(f"backup mode {backup_mode!r}: choose int8_asym or int8_sym")
        return ResolvedOptions(precision, TensorScheme(mode, group), TensorScheme(backup_mode), ratio, all_layers, preset)
    raise UnsupportedPrecisionError(
        f"precision {precision!r} is not offered by the OpenVINO backend; choose fp32, fp16, int8 or int4"
    )


def _dividing_group(k: int, group: int) -> int | None:
    g = group
    while g >= _SMALLEST_GROUP:
        if k % g == 0:
            return g
        g //= 2
    return None


def _is_edge(info: TensorInfo) -> bool:
    return info.role in (TensorRole.EMBED, TensorRole.LM_HEAD)


def plan_weights(
    infos: Iterable[TensorInfo],
    options: ResolvedOptions,
    sensitivity: dict[str, float] | None = None,
) -> WeightPlan:
    """Give every 2-D tensor a scheme.

    :param infos: the tensors of the checkpoint (shapes only).
    :param sensitivity: for ratio < 1, NNCF's data-free score per tensor name (lower goes to int4 first).
    """
    infos = [i for i in infos if i.role.is_matmul]
    plan = WeightPlan({}, options)
    primary, backup = options.primary, options.backup
    if not primary.is_int or primary.mode in (C.INT8_ASYM, C.INT8_SYM):
        for info in infos:
            plan.schemes[info.name] = fit_group(info, primary, backup, plan.notes)
        return plan

    candidates = [i for i in infos if options.all_layers or not _is_edge(i)]
    for info in infos:
        if info not in candidates:
            plan.schemes[info.name] = backup
    chosen = set(i.name for i in candidates)
    if options.ratio < 1.0:
        if sensitivity is None:
            raise ValueError("ratio < 1 needs a sensitivity score per tensor")
        chosen = set()
        total = sum(i.numel for i in candidates)
        done = 0
        for info in sorted(candidates, key=lambda i: sensitivity[i.name]):
            if (done + info.numel) / total >= options.ratio:
                break
            chosen.add(info.name)
            done += info.numel
    for info in candidates:
        if info.name in chosen:
            plan.schemes[info.name] = fit_group(info, primary, backup, plan.notes)
        else:
            plan.schemes[info.name] = backup
    if options.ratio < 1.0:
        kept = len(candidates) - len(chosen)
        plan.notes.append(
            f"ratio {options.ratio:g}: {len(chosen)} matmuls at {primary.label}, {kept} kept at "
            f"{backup.label} (NNCF's data-free criterion: int8 quantization error)"
        )
    return plan


def fit_group(info: TensorInfo, scheme: TensorScheme, backup: TensorScheme, notes: list[str]) -> TensorScheme:
    """A group size that divides this tensor's input size, or the backup with a note."""
    if not scheme.is_int or scheme.group_size is None:
        return scheme
    k = info.shape[-1]
    if k % scheme.group_size == 0:
        return scheme
    g = _dividing_group(k, scheme.group_size)
    if g is not None:
        notes.append(
            f"{info.name}: input size {k} is not a multiple of group size {scheme.group_size}; "
            f"used group size {g} (optimum-cli would fail here)"
        )
        return TensorScheme(scheme.mode, g)
    fallback = backup if backup.is_int and backup.mode != scheme.mode else TensorScheme(C.INT8_ASYM)
    notes.append(
        f"{info.name}: input size {k} has no power-of-two divisor >= {_SMALLEST_GROUP} up to "
        f"{scheme.group_size}; kept at {fallback.label}"
    )
    return fallback
