"""The whole export's module plan, once: what ``export`` writes and the ``quantize`` hook returns.

:func:`plan_model` starts from mlx-lm's rule (:func:`~.layout.plan_tensors`: every Linear and
the embedding at the global bits and group, overrides per module) and applies the
mixed-precision asks in mlx-lm's own means, per-module bits and group sizes written into
config.json's ``quantization`` block: ``--policy q4_k_m`` gives the modules llama.cpp's Q4_K_M
rule asks 5 or 6 bits for 8 bits (mlx has 5/6-bit modes; phi-quant's kernel writes 4 and 8),
and ``--bits-per-weight`` lets the core's data-free sensitivity choose 4 or 8 bits with groups
of 32, 64 or 128 per module.
"""

from __future__ import annotations

from dataclasses import replace

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.model.tensors import TensorInfo
from phi_quant.quant import budget
from phi_quant.quant.encode import check_recipe
from phi_quant.quant.plan import PlannedTensor as CorePlanned
from phi_quant.quant.plan import TensorPlan, cached_plan
from phi_quant.quant.scheme import Scheme
from phi_quant.types import ExportOptions

from .constants import GROUP_SIZES, PRECISION_BITS
from .layout import PlannedTensor, QuantParams, parse_overrides, plan_tensors, resolve_group_size

__all__ = ["plan_model", "plan_for", "tensor_plan", "core_scheme", "POLICIES"]

POLICIES = ("default", "uniform", "q4_k_m")

_PHI = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


def core_scheme(p: PlannedTensor) -> Scheme:
    """The core's description of one planned tensor: mlx affine with scales in its dtype, or a float copy."""
    if p.quant is None:
        return Scheme.keep_float(_PHI[p.dtype], p.dtype.lower())
    return Scheme.mlx(p.quant.bits, p.quant.group_size, _PHI[p.dtype])


def _policy(options: ExportOptions) -> str:
    policy = (options.policy or "default").lower()
    if policy not in POLICIES:
        raise UnsupportedPrecisionError(f"mlx has no policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return "uniform" if policy == "default" else policy


def plan_model(config, infos: list[TensorInfo], options: ExportOptions, source=None, strict: bool = True) -> list[PlannedTensor]:
    """Every tensor's output under ``options``; ``strict=False`` (one tensor planned alone) ignores
    overrides that name other modules."""
    gs = resolve_group_size(options.group_size)
    overrides = parse_overrides(options.get("overrides"), gs)
    tied = bool(config and config.tie_word_embeddings)
    if not strict:
        from .constants import parameter_path

        names = {parameter_path(i.role, i.layer, i.expert)[0] for i in infos if i.role.is_matmul}
        overrides = [o for o in overrides if any(o.matches(n) for n in names | ({"lm_head"} if tied else set()))]
    plan = plan_tensors(infos, options.precision, gs, overrides, options.get("dtype"), tied=tied)
    policy = _policy(options)
    if (policy != "uniform" or options.bits_per_weight is not None) and options.precision != "int4":
        raise UnsupportedPrecisionError("--policy and --bits-per-weight mix 4- and 8-bit modules; use --precision int4")
    if options.bits_per_weight is not None:
        plan = _budget(plan, options, source)
    elif policy == "q4_k_m":
        n_layers = getattr(config, "num_layers", 0) or 1
        out = []
        for p in plan:
            if p.quant is not None and budget.policy_level("q4_k_m", p.info, n_layers, tied, 4) > 4:
                p = replace(p, quant=QuantParams(8, p.quant.group_size), reason="policy q4_k_m: 8 bits")
            out.append(p)
        plan = out
    recipe = options.recipe or "rtn"
    for p in plan:
        if p.quant is not None:
            check_recipe(recipe, core_scheme(p), p.info.name)
    return plan


def _budget(plan: list[PlannedTensor], options: ExportOptions, source) -> list[PlannedTensor]:
    from phi_quant.quant.sensitivity import budget_choice

    if source is None:
        raise UnsupportedPrecisionError("--bits-per-weight needs the whole checkpoint to plan (pass source)")
    menus: dict[str, list[Scheme]] = {}
    params: dict[Scheme, QuantParams] = {}
    for p in plan:
        if p.quant is None:
            continue
        k = p.info.shape[-1]
        menu = []
        for bits in sorted(set(PRECISION_BITS.values())):
            for g in GROUP_SIZES:
                if k % g == 0:
                    s = Scheme.mlx(bits, g, _PHI[p.dtype])
                    params[s] = QuantParams(bits, g)
                    menu.append(s)
        menus[p.info.name] = sorted(menu, key=lambda s: s.nbytes(tuple(p.info.shape)))
    fixed = sum(core_scheme(p).nbytes(tuple(p.info.shape)) for p in plan if p.quant is None)
    choice = _per_module(plan, budget_choice(source, menus, options.bits_per_weight, fixed_bytes=fixed))
    return [replace(p, quant=params[choice[p.info.name]], reason=f"--bits-per-weight {options.bits_per_weight:g}")
            if p.info.name in choice else p for p in plan]


def _per_module(plan: list[PlannedTensor], choice: dict[str, Scheme]) -> dict[str, Scheme]:
    """One scheme per output module: PhiMoE's experts share one stacked SwitchLinear, which holds a
    single bits/group in mlx-lm, so every expert of it takes the largest scheme chosen for any of them."""
    best: dict[str, Scheme] = {}
    for p in plan:
        s = choice.get(p.info.name)
        if s is not None and (p.module not in best or s.nbytes(tuple(p.info.shape)) > best[p.module].nbytes(tuple(p.info.shape))):
            best[p.module] = s
    return {p.info.name: best[p.module] for p in plan if p.info.name in choice}


def tensor_plan(plan: list[PlannedTensor], recipe: str | None) -> TensorPlan:
    """The core's view of the plan, for the manifest."""
    return TensorPlan([CorePlanned(p.info, p.module, core_scheme(p), p.reason) for p in plan], recipe or "rtn")


def plan_for(source, options: ExportOptions) -> list[PlannedTensor]:
    """:func:`plan_model` for a whole checkpoint, once per (checkpoint, options) in a process."""
    return cached_plan("mlx", source, options, lambda: plan_model(source.config, source.tensor_infos(), options, source))
