"""Each tensor's GGUF type, decided once from shapes: the plan ``export`` and ``quantize`` share.

Two routes write a file:

``stream``  our writer, one pass over the checkpoint: types our kernel writes (F32/F16/BF16,
            Q8_0, Q4_0, Q4_1; values from the core's recipe) and any other ggml type
            quantized by ggml's own ``ggml_quantize_chunk`` (K-quants, Q5_0/Q5_1), row chunk by
            row chunk. Used for our schemes, ``--policy``, ``--bits-per-weight`` and overrides.
``llama``   the named K-quant mixes (``--scheme Q4_K_M``, ``Q5_K_M``, ``Q6_K``): llama.cpp's
            ``llama_model_quantize`` from a lossless temporary GGUF, exactly as ``llama-quantize``.
            The plan states the type llama.cpp picks for every tensor (:func:`llama_type`, its
            ``llama_tensor_get_type`` for phi3), so the ``quantize`` hook gives the file's bytes;
            the conformance kit checks both against the written file.

Policies (``--policy``) for our schemes: ``uniform`` puts every matrix in the scheme's type
(what ``convert_hf_to_gguf --outtype`` does; the default); ``q4_k_m`` is llama.cpp's Q4_K_M
rule, the same types ``--scheme Q4_K_M`` gets, written by our streaming writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.model.tensors import TensorInfo, TensorRole
from phi_quant.quant import budget
from phi_quant.quant.encode import check_recipe
from phi_quant.quant.plan import PlannedTensor as CorePlanned
from phi_quant.quant.plan import TensorPlan, cached_plan
from phi_quant.quant.scheme import Scheme
from phi_quant.types import ExportOptions

from .constants import BLOCK_SIZES, KERNEL_TYPES, LLAMA_QUANTIZER_SCHEMES, PRECISION_SCHEMES, GGMLType
from .layout import PlannedTensor, choose_type, parse_tensor_types, plan_tensors, stacked_groups

__all__ = ["GGUFPlan", "core_scheme", "llama_type", "plan_model", "resolve_scheme", "LOSSLESS_TYPES", "POLICIES"]

#: Lossless GGUF type for each stored dtype (the temporary input of llama.cpp's quantizer).
LOSSLESS_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}

#: ``--policy`` values this backend follows for its own schemes.
POLICIES = ("default", "uniform", "q4_k_m")

_BITS = {GGMLType.F32: 32, GGMLType.F16: 16, GGMLType.BF16: 16, GGMLType.Q4_0: 4, GGMLType.Q4_1: 4,
         GGMLType.Q5_0: 5, GGMLType.Q5_1: 5, GGMLType.Q8_0: 8, GGMLType.Q2_K: 2, GGMLType.Q3_K: 3,
         GGMLType.Q4_K: 4, GGMLType.Q5_K: 5, GGMLType.Q6_K: 6}

#: llama.cpp's replacement when a K-quant does not fit the row length (``llama_tensor_get_type``).
_K_FALLBACK = {GGMLType.Q4_K: GGMLType.Q5_0, GGMLType.Q5_K: GGMLType.Q5_1, GGMLType.Q6_K: GGMLType.Q8_0}

#: The base type of each named K-quant mix.
_MIX_BASE = {"Q4_K_M": GGMLType.Q4_K, "Q5_K_M": GGMLType.Q5_K, "Q6_K": GGMLType.Q6_K}


def core_scheme(t: GGMLType) -> Scheme:
    """The core's description of a ggml type: float copy, a kernel layout, or native (ggml's quantizer)."""
    t = GGMLType(t)
    if t in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        return Scheme.keep_float({GGMLType.F32: "f32", GGMLType.F16: "f16", GGMLType.BF16: "bf16"}[t], t.name)
    if t.name in KERNEL_TYPES:
        return Scheme.ggml(t.name)
    return Scheme.native(t.name, BLOCK_SIZES[t], _BITS[t])


def resolve_scheme(options: ExportOptions) -> str:
    """The native scheme for ``options`` (``--scheme`` or ``extra["scheme"]`` over the precision default)."""
    if options.precision not in PRECISION_SCHEMES:
        raise UnsupportedPrecisionError(
            f"llamacpp has no precision {options.precision!r}; choose one of {', '.join(PRECISION_SCHEMES)}"
        )
    default, others = PRECISION_SCHEMES[options.precision]
    scheme = (options.scheme or options.get("scheme") or default).upper()
    if scheme not in (default, *others):
        owner = [p for p, (d, o) in PRECISION_SCHEMES.items() if scheme in (d, *o)]
        hint = f"; {scheme} belongs to --precision {owner[0]}" if owner else ""
        raise UnsupportedPrecisionError(
            f"scheme {scheme} is not offered for {options.precision} (choose {', '.join((default, *others))}){hint}"
        )
    return scheme


def _fits(t: GGMLType, k: int) -> bool:
    return k % BLOCK_SIZES[t][0] == 0


def _fit(t: GGMLType, k: int) -> GGMLType:
    """llama.cpp's fallback chain for a type that does not fit the row length."""
    if _fits(t, k):
        return t
    t = _K_FALLBACK.get(t, GGMLType.F16)
    return t if _fits(t, k) else GGMLType.F16


def llama_type(info: TensorInfo, ftype: str, n_layers: int, tied: bool) -> GGMLType:
    """The type ``llama-quantize`` gives a phi3 matrix for file type ``ftype`` (no imatrix).

    Output matrix (the embedding when tied): Q6_K, Q8_0 when the row length does not fit (and
    unchanged for Q8_0 files); Q4_K_M and Q5_K_M: the fused qkv and ffn_down at Q6_K in
    llama.cpp's "more bits" layers (the installed llama.cpp treats attn_qkv as attn_v, which
    the conformance kit's byte check against the written file pins); then the K-quant fallback chain.
    """
    role = TensorRole(info.role)
    k = info.shape[-1]
    base = _MIX_BASE.get(ftype) or GGMLType[ftype]
    t = base
    if role == TensorRole.LM_HEAD or (tied and role == TensorRole.EMBED):
        if not _fits(base, k):
            return GGMLType.Q8_0 if _fits(GGMLType.Q8_0, k) else GGMLType.F16
        t = base if base == GGMLType.Q8_0 else GGMLType.Q6_K
    elif role in (TensorRole.QKV, TensorRole.V, TensorRole.DOWN) and ftype in ("Q4_K_M", "Q5_K_M") and info.layer is not None:
        if budget._use_more_bits(info.layer, n_layers):
            t = GGMLType.Q6_K
    return _fit(t, k)


@dataclass
class GGUFPlan:
    """What one export writes: its file scheme, route, every tensor's slot and the core's view of it."""

    scheme: str  # the file's scheme name (general.file_type)
    route: str  # "stream" or "llama"
    entries: list[PlannedTensor]
    tensor_plan: TensorPlan
    overrides: dict[str, str] = field(default_factory=dict)
    lossless: str | None = None  # llama route: the temporary GGUF's type

    def entry(self, name: str) -> PlannedTensor:
        """The GGUF tensor source tensor ``name`` is written into (an expert: its stacked tensor)."""
        return next(p for p in self.entries if any(i.name == name for i in p.infos))


def _policy(options: ExportOptions) -> str:
    policy = (options.policy or "default").lower()
    if policy not in POLICIES:
        raise UnsupportedPrecisionError(f"llamacpp has no policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return "uniform" if policy == "default" else policy


def _menu(info: TensorInfo) -> list[GGMLType]:
    """The ggml types a matrix may take in a size budget, cheapest first."""
    k = info.shape[-1]
    order = [GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_K,
             GGMLType.Q5_1, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.F16]
    return [t for t in order if _fits(t, k)]


def _stream_entries(infos: list[TensorInfo], scheme: str, options: ExportOptions, n_layers: int, tied: bool,
                    overrides: dict[str, str], source) -> list[PlannedTensor]:
    policy = _policy(options)
    if options.bits_per_weight is not None:
        if any(i.expert is not None for i in infos):
            raise UnsupportedPrecisionError(
                "--bits-per-weight does not plan mixture-of-experts stacks yet (every expert of a stacked GGUF tensor "
                "shares one type); use --policy q4_k_m or a --scheme")
        chosen = _budget_types(infos, options, source)
        base = {i.name: chosen.get(i.name) for i in infos}
        reason = f"--bits-per-weight {options.bits_per_weight:g}"
    elif policy == "q4_k_m":
        if options.precision != "int4":
            raise UnsupportedPrecisionError("policy q4_k_m is llama.cpp's 4-bit mix; use --precision int4")
        base = {i.name: llama_type(i, "Q4_K_M", n_layers, tied) for i in infos if i.role.is_matmul}
        reason = "policy q4_k_m (llama.cpp's Q4_K_M rule)"
    else:
        base, reason = {}, "scheme default"
    out = []
    for members in stacked_groups(infos):
        entry, _ = choose_type(members[0], scheme, overrides, infos=members)
        t = base.get(members[0].name)
        if t is not None and not entry.reason.startswith("override"):
            entry = PlannedTensor(members, type(entry.slot)(entry.slot.name, entry.slot.shape, t), reason)
        out.append(entry)
    return out


def plan_model(config, infos: list[TensorInfo], options: ExportOptions, source=None, strict: bool = True) -> GGUFPlan:
    """The plan for ``infos`` under ``options``; refuses what this backend cannot write.

    ``strict=False`` (one tensor planned alone) skips the check that every override matches a tensor.
    """
    scheme = resolve_scheme(options)
    overrides = parse_tensor_types(options.get("tensor_types"))
    n_layers = getattr(config, "num_layers", 0) or 1
    tied = bool(getattr(config, "tie_word_embeddings", False))
    recipe = options.recipe or "rtn"
    if scheme in LLAMA_QUANTIZER_SCHEMES:
        if options.bits_per_weight is not None or _policy(options) != "uniform":
            raise UnsupportedPrecisionError(
                f"--scheme {scheme} is llama.cpp's own mix; for a budget or a policy use --scheme Q4_0 (or drop --scheme)")
        if recipe != "rtn" and not _llama_accepts(recipe):
            raise UnsupportedPrecisionError(
                f"--scheme {scheme} is made by llama.cpp's quantizer, which chooses its own values; recipe {recipe} "
                "applies to our types (Q4_0, Q4_1, Q8_0): try --policy q4_k_m --recipe " + recipe
                + " (or --recipe awq, which llama.cpp's quantizer takes: the scaled model and its importance matrix)")
        stored = {i.dtype for i in infos if i.role.is_matmul}
        lossless = LOSSLESS_TYPES[stored.pop()] if len(stored) == 1 else "F32"  # mixed dtypes: widen
        if strict:
            plan_tensors(infos, "Q8_0", overrides)  # refuse overrides that match no tensor
        entries = []
        for members in stacked_groups(infos):
            info = members[0]
            entry, matched = choose_type(info, "F32", overrides, infos=members)
            if info.role.is_matmul and info.role is not TensorRole.ROUTER and not matched:
                t = llama_type(info, scheme, n_layers, tied)
                entry = PlannedTensor(members, type(entry.slot)(entry.slot.name, entry.slot.shape, t), f"llama.cpp's {scheme} rule")
            entries.append(entry)
        route = "llama"
    else:
        if strict:
            plan_tensors(infos, scheme, overrides)  # refuse overrides that match no tensor
        entries = _stream_entries(infos, scheme, options, n_layers, tied, overrides, source)
        lossless = None
        route = "stream"
    core = [CorePlanned(i, p.slot.name, core_scheme(p.slot.type), p.reason) for p in entries for i in p.infos]
    for p in core:
        if p.scheme.packed_by_kernel:
            check_recipe(recipe, p.scheme, p.name)
    tensor_plan = TensorPlan(core, recipe)
    if recipe != "rtn":
        native = sorted({p.scheme.name for p in core if p.scheme.layout == "native"})
        if native:
            tensor_plan.notes.append(f"{', '.join(native)} tensors are quantized by ggml's own quantizer "
                                     f"(recipe {recipe} applies to the Q4_0/Q4_1/Q8_0 ones)")
    return GGUFPlan(scheme, route, entries, tensor_plan, overrides, lossless)


def _llama_accepts(recipe: str) -> bool:
    """True for a recipe llama.cpp's own quantizer can follow: AWQ (a scaled model) with round to
    nearest, whose calibrated importance it takes as its importance matrix."""
    from phi_quant.quant.recipes import get_recipe

    r = get_recipe(recipe)
    return bool(getattr(r, "awq", False)) and getattr(getattr(r, "rule", None), "name", "") == "rtn"


def _budget_types(infos: list[TensorInfo], options: ExportOptions, source) -> dict[str, GGMLType]:
    from phi_quant.quant.sensitivity import budget_choice

    from .ggml_lib import ggml_dequantize, ggml_quantize

    if source is None:
        raise UnsupportedPrecisionError("--bits-per-weight needs the whole checkpoint to plan (pass source)")
    menus = {i.name: [core_scheme(t) for t in _menu(i)] for i in infos if i.role.is_matmul}

    def native_roundtrip(w, scheme: Scheme):
        t = GGMLType[scheme.name]
        return ggml_dequantize(ggml_quantize(w, t), t, w.shape)

    choice = budget_choice(source, menus, options.bits_per_weight, native_roundtrip)
    return {name: GGMLType[s.name] for name, s in choice.items()}


def plan_for(source, options: ExportOptions) -> GGUFPlan:
    """:func:`plan_model` for a whole checkpoint, computed once per (checkpoint, options) in a process."""
    return cached_plan("llamacpp", source, options, lambda: plan_model(source.config, source.tensor_infos(), options, source))
