"""Each tensor's storage in the ONNX graph, decided once: the plan ``export`` and ``quantize`` share.

A storage is a float initializer (fp32/fp16/bf16; decoder matmuls transposed to [K, N]) or
``MatMulNBits`` blocks (4 or 8 bits, a block size, symmetric or not, scales in the activation
type). Defaults come from :class:`~.settings.OnnxSettings`: decoder matmuls at ``body``, the
lm_head at ``lm_head``, the embedding at ``embeddings`` (a tied model's single table follows the
lm_head, so a tied int4 export stores the table once as int4 and gathers from it with
``GatherBlockQuantized``). The mixed-precision means of this format are per-node bits and block
sizes: ``--policy q4_k_m`` gives the nodes llama.cpp's Q4_K_M rule asks 5 or 6 bits for the
8-bit MatMulNBits; ``--bits-per-weight`` chooses among 4- and 8-bit nodes with blocks of 32 to
128 (and fp16 for the table) by the core's data-free sensitivity.
"""

from __future__ import annotations

from dataclasses import dataclass

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.model.tensors import TensorInfo, TensorRole
from phi_quant.quant import budget
from phi_quant.quant.encode import check_recipe
from phi_quant.quant.plan import PlannedTensor, TensorPlan, cached_plan
from phi_quant.quant.scheme import Scheme
from phi_quant.types import ExportOptions

from .settings import OnnxSettings, settings_from_options

__all__ = ["Storage", "OnnxPlan", "plan_model", "plan_for", "check_expert_stacks", "POLICIES"]

POLICIES = ("default", "uniform", "q4_k_m")

_FLOAT = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
_BUDGET_BLOCKS = (32, 64, 128)


@dataclass(frozen=True)
class Storage:
    """How one weight is stored: ``kind`` (fp32/fp16/bf16/int4/int8), its core scheme, and for floats
    whether the initializer is the transposed [K, N] a MatMul reads."""

    kind: str
    scheme: Scheme
    transposed: bool = False

    @property
    def quantized(self) -> bool:
        return self.kind in ("int4", "int8")


@dataclass
class OnnxPlan:
    settings: OnnxSettings
    storages: dict[str, Storage]
    tied_head: Storage | None  # a tied model's lm_head when it is stored apart from the table
    tensor_plan: TensorPlan

    def storage(self, name: str) -> Storage:
        return self.storages[name]


def _storage(kind: str, settings: OnnxSettings, transposed: bool, block: int | None = None) -> Storage:
    if kind in ("int4", "int8"):
        scheme = Scheme.matmulnbits(settings.bits(kind), block or settings.block_size, settings.symmetric,
                                    _FLOAT[settings.io_dtype])
        return Storage(kind, scheme, False)
    return Storage(kind, Scheme.keep_float(_FLOAT[kind], kind), transposed)


def _default_kind(role: TensorRole, settings: OnnxSettings) -> str:
    return settings.storage_for(role)


def _policy(options: ExportOptions) -> str:
    policy = (options.policy or "default").lower()
    if policy not in POLICIES:
        raise UnsupportedPrecisionError(f"onnx has no policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return "uniform" if policy == "default" else policy


def plan_model(config, infos: list[TensorInfo], options: ExportOptions, source=None) -> OnnxPlan:
    """The storage of every tensor under ``options``; refuses what this backend cannot write."""
    settings = settings_from_options(options, config)
    tied = bool(config and config.tie_word_embeddings)
    n_layers = getattr(config, "num_layers", 0) or 1
    policy = _policy(options)
    quantized = settings.quantized
    if (policy != "uniform" or options.bits_per_weight is not None) and not quantized:
        raise UnsupportedPrecisionError(f"--policy and --bits-per-weight mix integer node widths; {options.precision} "
                                        "stores every weight as a float")
    chosen: dict[str, Storage] = {}
    reasons: dict[str, str] = {}
    if options.bits_per_weight is not None:
        chosen = _budget_storages(infos, settings, options, source)
        reasons = {name: f"--bits-per-weight {options.bits_per_weight:g}" for name in chosen}
    storages: dict[str, Storage] = {}
    for info in infos:
        role = TensorRole(info.role)
        if info.name in chosen:
            storages[info.name] = chosen[info.name]
            continue
        kind = _default_kind(role, settings)
        if policy == "q4_k_m" and role.is_matmul and kind == "int4":
            level = budget.policy_level("q4_k_m", info, n_layers, tied, 4)
            if level > 4:
                kind, reasons[info.name] = "int8", f"policy q4_k_m: {level} bits -> 8-bit MatMulNBits"
        # MatMul reads [K, N]; MoE's stacked experts (and the embedding table) keep [N, K]
        transposed = role.is_matmul and role != TensorRole.EMBED and info.expert is None
        storages[info.name] = _storage(kind, settings, transposed)
    if config is not None and getattr(config, "is_moe", False):
        check_expert_stacks(infos, storages)
    tied_head = None
    embed = next((i for i in infos if TensorRole(i.role) == TensorRole.EMBED), None)
    if tied and embed is not None and settings.lm_head != storages[embed.name].kind and embed.name not in reasons:
        tied_head = _storage(settings.lm_head, settings, settings.lm_head not in ("int4", "int8"))
    recipe = options.recipe or "rtn"
    entries = []
    for info in infos:
        st = storages[info.name]
        entries.append(PlannedTensor(info, _output_name(info), st.scheme, reasons.get(info.name, "")))
        if st.quantized:
            check_recipe(recipe, st.scheme, info.name)
    if tied_head is not None and tied_head.quantized:
        check_recipe(recipe, tied_head.scheme, "lm_head")
    tensor_plan = TensorPlan(entries, recipe)
    if tied_head is not None:
        tensor_plan.notes.append(f"tied lm_head stored a second time as {tied_head.scheme.name}")
    return OnnxPlan(settings, storages, tied_head, tensor_plan)


def check_expert_stacks(infos: list[TensorInfo], storages: dict[str, Storage]) -> None:
    """Refuse a plan that stores one layer's experts differently: MoE / QMoE read a layer's experts
    from stacked tensors with one element type (or one bit width and block size) for the node."""
    by_layer: dict[int, dict[Storage, str]] = {}
    for info in infos:
        if info.expert is not None:
            by_layer.setdefault(info.layer, {}).setdefault(storages[info.name], info.name)
    for layer, found in sorted(by_layer.items()):
        if len(found) > 1:
            names = ", ".join(f"{name} as {st.scheme.name}" for st, name in list(found.items())[:3])
            raise UnsupportedPrecisionError(
                f"layer {layer}'s experts would be stored differently ({names}): onnxruntime's MoE/QMoE take a layer's "
                "experts as stacked tensors with one type, bit width and block size; use --policy uniform "
                "without --bits-per-weight for a mixture-of-experts model"
            )


def _output_name(info: TensorInfo) -> str:
    return info.name[: -len(".weight")] if info.name.endswith(".weight") and info.role.is_matmul else info.name


def _budget_storages(infos: list[TensorInfo], settings: OnnxSettings, options: ExportOptions, source) -> dict[str, Storage]:
    from phi_quant.quant.sensitivity import budget_choice

    if source is None:
        raise UnsupportedPrecisionError("--bits-per-weight needs the whole checkpoint to plan (pass source)")
    menus: dict[str, list[Scheme]] = {}
    kinds: dict[Scheme, str] = {}
    for info in infos:
        if not info.role.is_matmul:
            continue
        menu = []
        for kind in ("int4", "int8"):
            for block in _BUDGET_BLOCKS:
                st = _storage(kind, settings, False, block)
                menu.append(st.scheme)
                kinds[st.scheme] = kind
        menus[info.name] = sorted(menu, key=lambda s: s.nbytes(tuple(info.shape)))
    fixed = sum(i.numel * (4 if settings.io_dtype == "fp32" else 2) for i in infos if not i.role.is_matmul)
    choice = budget_choice(source, menus, options.bits_per_weight, fixed_bytes=fixed)
    return {name: Storage(kinds[s], s, False) for name, s in choice.items()}


def plan_for(source, options: ExportOptions) -> OnnxPlan:
    """:func:`plan_model` for a whole checkpoint, once per (checkpoint, options) in a process."""
    return cached_plan("onnx", source, options, lambda: plan_model(source.config, source.tensor_infos(), options, source))
