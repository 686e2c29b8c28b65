"""The whole export's weight plan, once: what ``export`` writes and the ``quantize`` hook returns.

:func:`plan_model` turns the options into a :class:`~.schemes.WeightPlan` by NNCF's rules
(:func:`~.schemes.plan_weights`: int8 everywhere, or int4 with the embeddings and lm_head at the
int8 backup; a ratio below 1 first scores every candidate matmul as NNCF does, which streams the
weights once), then applies the mixed-precision asks in this format's own means: ``--policy
q4_k_m`` keeps the layers llama.cpp's Q4_K_M rule gives 5 or 6 bits at the int8 backup, and
``--bits-per-weight`` lets the core's data-free sensitivity choose, per matmul, between int4 at
group 32/64/128 (the groups that divide its input size), the int8 backup and fp16.
"""

from __future__ import annotations

import numpy as np

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.model.tensors import TensorInfo, TensorRole
from phi_quant.quant import budget
from phi_quant.quant.encode import check_recipe
from phi_quant.quant.plan import PlannedTensor, TensorPlan, cached_plan
from phi_quant.quant.scheme import Scheme
from phi_quant.types import ExportOptions

from . import constants as C
from .schemes import TensorScheme, WeightPlan, core_scheme, plan_weights, resolve_options

__all__ = ["plan_model", "plan_for", "tensor_plan", "nncf_sensitivity", "POLICIES"]

POLICIES = ("default", "uniform", "q4_k_m")


def nncf_sensitivity(source, candidates: set[str]) -> dict[str, float]:
    """NNCF's data-free score per tensor: 1 / (int8_asym max-mean squared error + eps)."""
    from phi_quant import quant as q

    from .packing import dequantize, pack, row_chunks

    scores: dict[str, float] = {}
    backup = TensorScheme(C.INT8_ASYM)
    for t in source.tensors():
        if t.name not in candidates:
            continue
        worst = 0.0
        for r0, r1 in row_chunks(t):
            w = q.to_float32(t.raw()[r0:r1], t.dtype)
            err = (dequantize(pack(t, backup, (r0, r1)), backup, (r1 - r0, t.shape[1])) - w) ** 2
            worst = max(worst, float(err.mean(axis=1).max()))
        scores[t.name] = 1.0 / (worst + float(np.finfo(np.float32).eps))
    return scores


def _policy(options: ExportOptions) -> str:
    policy = (options.policy or "default").lower()
    if policy not in POLICIES:
        raise UnsupportedPrecisionError(f"openvino has no policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return "uniform" if policy == "default" else policy


def plan_model(config, infos: list[TensorInfo], options: ExportOptions, source=None) -> WeightPlan:
    """Every 2-D tensor's scheme under ``options``; refuses what this backend cannot write.

    A mixture of experts' routers (:func:`.phimoe.float_kept`) stay out of every integer rule
    (ratio scores, policy, budget) and keep the precision's float type.
    """
    from .phimoe import float_kept, keep_router_float

    infos = list(infos)
    routers = [i for i in infos if float_kept(i)]
    infos = [i for i in infos if not float_kept(i)]
    opts = resolve_options(options)
    policy = _policy(options)
    int4 = opts.primary.mode in (C.INT4_ASYM, C.INT4_SYM)
    if (policy != "uniform" or options.bits_per_weight is not None) and not int4:
        raise UnsupportedPrecisionError("--policy and --bits-per-weight mix int4 and int8 layers; use --precision int4")
    sensitivity = None
    if opts.ratio < 1.0:
        if source is None:
            raise UnsupportedPrecisionError("ratio < 1 scores every layer: it needs the whole checkpoint (pass source)")
        edge = ("embed", "lm_head")
        candidates = {i.name for i in infos if i.role.is_matmul and (opts.all_layers or i.role.value not in edge)}
        sensitivity = nncf_sensitivity(source, candidates)
    plan = plan_weights(infos, opts, sensitivity)
    if options.bits_per_weight is not None:
        chosen = _budget(infos, plan, options, source)
        for name, scheme in chosen.items():
            plan.schemes[name] = scheme
            plan.reasons[name] = f"--bits-per-weight {options.bits_per_weight:g}"
    elif policy == "q4_k_m":
        n_layers = getattr(config, "num_layers", 0) or 1
        tied = bool(config and config.tie_word_embeddings)
        for info in infos:
            if info.role.is_matmul and budget.policy_level("q4_k_m", info, n_layers, tied, 4) > 4:
                if plan.schemes[info.name] != opts.backup:
                    plan.schemes[info.name] = opts.backup
                    plan.reasons[info.name] = f"policy q4_k_m: kept at {opts.backup.label}"
    keep_router_float(plan, routers)
    recipe = options.recipe or "rtn"
    for name, scheme in plan.schemes.items():
        if scheme.is_int:
            check_recipe(recipe, core_scheme(scheme), name)
    return plan


def _budget(infos: list[TensorInfo], plan: WeightPlan, options: ExportOptions, source) -> dict[str, TensorScheme]:
    from phi_quant.quant.sensitivity import budget_choice

    if source is None:
        raise UnsupportedPrecisionError("--bits-per-weight needs the whole checkpoint to plan (pass source)")
    opts = plan.options
    menus: dict[str, list[Scheme]] = {}
    back: dict[Scheme, TensorScheme] = {}
    for info in infos:
        if not info.role.is_matmul:
            continue
        options_for = [TensorScheme(opts.primary.mode, g) for g in (32, 64, 128) if info.shape[-1] % g == 0]
        options_for.append(TensorScheme(opts.primary.mode, None))  # per output channel (NNCF's group_size -1)
        options_for += [opts.backup, TensorScheme(C.FP16)]
        menu = []
        for ts in options_for:
            cs = core_scheme(ts)
            back[cs] = ts
            menu.append(cs)
        menus[info.name] = sorted(menu, key=lambda s: s.nbytes(tuple(info.shape)))
    fixed = sum(i.numel * 4 for i in infos if not i.role.is_matmul)
    choice = budget_choice(source, menus, options.bits_per_weight, fixed_bytes=fixed)
    return {name: back[s] for name, s in choice.items()}


def tensor_plan(plan: WeightPlan, infos: list[TensorInfo], recipe: str | None) -> TensorPlan:
    """The core's view of ``plan``: one entry per tensor (norms f32), for the manifest."""
    reasons = plan.reasons
    entries = []
    for info in infos:
        ts = plan.schemes.get(info.name, TensorScheme(C.FP32))
        entries.append(PlannedTensor(info, info.name, core_scheme(ts), reasons.get(info.name, "")))
    return TensorPlan(entries, recipe or "rtn", list(plan.notes))


def plan_for(source, options: ExportOptions) -> WeightPlan:
    """:func:`plan_model` for a whole checkpoint, once per (checkpoint, options) in a process."""
    return cached_plan("openvino", source, options, lambda: plan_model(source.config, source.tensor_infos(), options, source))


def single_tensor_scheme(info: TensorInfo, options: ExportOptions) -> TensorScheme:
    """A tensor planned alone (the hook without its checkpoint): NNCF's rules for one tensor."""
    if not TensorRole(info.role).is_matmul:
        return TensorScheme(C.FP32)
    return plan_model(None, [info], options).schemes[info.name]
