"""Pick backend + precision + options for a device, and say why.

The policy follows the field's guidance: phones and IoT boards get INT4 (memory bandwidth and
battery rule, and the model must leave room for the OS), AI PCs, Apple Silicon and GPUs get the
highest precision that fits comfortably. "Fits" means weights + KV cache at the deployment
context + runtime overhead stay within the share of memory a model may take on that device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .errors import BadInputError
from .model.config import PhiConfig
from .sizing import GIB, MemoryEstimate, estimate_memory, format_count

__all__ = ["DeviceProfile", "TARGETS", "Recommendation", "recommend", "DEFAULT_FIDELITY", "machine_profile"]

#: Mean next-token KL(fp32 || precision) used when no ``compare`` report is given. Orders of
#: magnitude measured on the tiny test models (docs/fidelity.md); real models are usually
#: gentler at int8 and similar at int4.
DEFAULT_FIDELITY = {"fp32": 0.0, "fp16": 1e-5, "bf16": 1e-4, "int8": 1e-3, "int4": 3e-2}

_PRECISION_ORDER = ("fp32", "fp16", "int8", "int4")  # most faithful first


@dataclass(frozen=True)
class DeviceProfile:
    """A device class: how much memory a model may use there and which runtimes serve it."""

    name: str
    description: str
    memory_bytes: int  # memory the device has for everything
    model_share: float  # fraction of it a model may take
    backends: tuple[str, ...]  # preferred order
    policy: str  # "smallest" (always int4) or "best-fit" (highest precision that fits)
    max_precision: str = "fp16"  # the most a device class needs (fp32 is for checking, not deploying)
    default_context: int = 4096  # tokens of context a deployment on this class typically keeps
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per backend
    why: str = ""

    @property
    def budget(self) -> int:
        return int(self.memory_bytes * self.model_share)


TARGETS: dict[str, DeviceProfile] = {
    "iot": DeviceProfile(
        "iot",
        "an IoT / single-board ARM computer (CPU only, about 8 GiB RAM)",
        8 * GIB,
        0.6,
        ("llamacpp", "onnx"),
        "smallest",
        default_context=1024,
        options={"llamacpp": {"scheme": "Q4_0"}, "onnx": {"block_size": 32, "accuracy_level": 4}},
        why="llama.cpp's Q4_0 has hand-tuned ARM NEON kernels and runs without any other runtime",
    ),
    "mobile": DeviceProfile(
        "mobile",
        "a phone (about 8 GiB RAM shared with the OS and apps)",
        8 * GIB,
        0.45,
        ("onnx", "llamacpp", "mlx"),
        "smallest",
        default_context=2048,
        options={"onnx": {"block_size": 32, "accuracy_level": 4}, "llamacpp": {"scheme": "Q4_0"}},
        why="ONNX Runtime GenAI ships mobile packages for Android and iOS with int4 MatMulNBits kernels",
    ),
    "ai-pc": DeviceProfile(
        "ai-pc",
        "an AI PC (x86 laptop/desktop with NPU or integrated GPU, about 32 GiB RAM)",
        32 * GIB,
        0.5,
        ("openvino", "onnx", "llamacpp"),
        "best-fit",
        options={"onnx": {"target": "dml"}},
        why="OpenVINO runs the same IR on the CPU, the integrated GPU and the NPU of Intel AI PCs",
    ),
    "nvidia-gpu": DeviceProfile(
        "nvidia-gpu",
        "an NVIDIA GPU (about 24 GiB of VRAM)",
        24 * GIB,
        0.85,
        ("onnx", "llamacpp"),
        "best-fit",
        options={"onnx": {"target": "cuda"}},
        why="ONNX Runtime GenAI's CUDA provider runs fp16 and int4 MatMulNBits on the GPU",
    ),
    "apple-silicon": DeviceProfile(
        "apple-silicon",
        "an Apple Silicon Mac (about 16 GiB unified memory)",
        16 * GIB,
        0.6,
        ("mlx", "llamacpp"),
        "best-fit",
        why="MLX runs natively on the Metal GPU with unified memory",
    ),
    "intel-npu": DeviceProfile(
        "intel-npu",
        "an Intel NPU (Core Ultra; the model shares about 16 GiB of system RAM)",
        16 * GIB,
        0.5,
        ("openvino",),
        "smallest",
        options={"openvino": {"preset": "npu"}},
        why="Intel NPUs run symmetric int4 weights (per channel or group 128) through OpenVINO",
    ),
}


@dataclass
class Recommendation:
    """The answer: what to run, why, and what else was considered."""

    target: str
    backend: str
    precision: str
    options: dict[str, Any]
    memory: MemoryEstimate
    budget_bytes: int
    reason: str
    installed: bool
    command: str
    alternatives: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "backend": self.backend,
            "precision": self.precision,
            "options": self.options,
            "memory": self.memory.as_dict(),
            "budget_bytes": self.budget_bytes,
            "reason": self.reason,
            "backend_installed": self.installed,
            "command": self.command,
            "alternatives": self.alternatives,
        }


def machine_profile(total_ram: int, *, apple_silicon: bool = False, nvidia_vram: int | None = None,
                    npu: bool = False) -> DeviceProfile:
    """A profile for the machine phi-quant runs on, from what ``doctor`` detected."""
    if nvidia_vram:
        base = TARGETS["nvidia-gpu"]
        return DeviceProfile("this-machine", f"this machine's NVIDIA GPU ({nvidia_vram / GIB:.0f} GiB VRAM)",
                             nvidia_vram, base.model_share, base.backends, "best-fit", options=base.options, why=base.why)
    if apple_silicon:
        base = TARGETS["apple-silicon"]
        return DeviceProfile("this-machine", f"this Apple Silicon Mac ({total_ram / GIB:.0f} GiB unified memory)",
                             total_ram, base.model_share, base.backends, "best-fit", why=base.why)
    backends = ("openvino", "llamacpp", "onnx", "mlx") if npu else ("llamacpp", "openvino", "onnx", "mlx")
    return DeviceProfile("this-machine", f"this machine (CPU, {total_ram / GIB:.0f} GiB RAM)", total_ram, 0.5,
                         backends, "best-fit",
                         why="on a CPU, llama.cpp and OpenVINO have the fastest quantized matmul kernels")


#: Option keys that have their own ``quantize`` flag.
_CLI_FLAGS = {"scheme": "--scheme", "target": "--target", "block_size": "--group-size", "group_size": "--group-size"}


def _fmt(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= 0.1 * GIB else f"{n / 1024**2:.0f} MiB"


def _moe_note(config: PhiConfig) -> str:
    """What sizing a mixture of experts means, for the recommendation's reason."""
    return (f" It is a mixture of experts: all {config.num_experts} experts "
            f"({format_count(config.parameter_count())} parameters) must be in memory, but each token runs through "
            f"only {format_count(config.active_parameter_count())} of them, so it runs about as fast as a dense model "
            "of that size.")


def recommend(
    config: PhiConfig,
    profile: DeviceProfile,
    *,
    installed_backends: Sequence[str] = (),
    backend_precisions: Mapping[str, Sequence[str]] | None = None,
    context_length: int | None = None,
    memory_bytes: int | None = None,
    precision: str | None = None,
    backend: str | None = None,
    fidelity: Mapping[tuple[str, str], float] | None = None,
    model_name: str = "MODEL",
) -> Recommendation:
    """Choose backend + precision for ``profile``; raise :class:`BadInputError` when nothing fits.

    :param installed_backends: backends installed here; preferred when the profile allows them.
    :param backend_precisions: precisions each backend offers (defaults to fp32/fp16/int8/int4).
    :param context_length: tokens of context to budget the KV cache for (default: the profile's).
    :param memory_bytes: override the device's memory (``--memory``).
    :param precision: force a precision; refused when it does not fit.
    :param fidelity: measured mean KL per (backend, precision), e.g. from a ``compare`` report.
    """
    if memory_bytes is not None:
        profile = DeviceProfile(profile.name, profile.description.split(" (")[0] + f" ({_fmt(memory_bytes)} memory)",
                                memory_bytes, profile.model_share, profile.backends, profile.policy,
                                profile.max_precision, profile.default_context, profile.options, profile.why)
    if context_length is None:
        context_length = profile.default_context
    budget = profile.budget
    moe = _moe_note(config) if config.is_moe else ""
    estimates = {p: estimate_memory(config, p, context_length) for p in _PRECISION_ORDER}
    if precision is not None:
        if precision not in estimates:
            raise BadInputError(f"unknown precision {precision!r}; choose one of {', '.join(_PRECISION_ORDER)}")
        if estimates[precision].total > budget:
            raise BadInputError(
                f"{precision} does not fit {profile.description}: it needs about {_fmt(estimates[precision].total)} "
                f"(weights {_fmt(estimates[precision].weights)} + KV cache {_fmt(estimates[precision].kv_cache)} for "
                f"{context_length} tokens) but a model may use about {_fmt(budget)} there. "
                f"Try int4, a shorter --context-length, or --memory if the device has more.{moe}"
            )
        candidates = [precision]
    else:
        allowed = _PRECISION_ORDER[_PRECISION_ORDER.index(profile.max_precision):]
        fitting = [p for p in allowed if estimates[p].total <= budget]
        if not fitting:
            raise BadInputError(
                f"{model_name} does not fit {profile.description} even at int4: it needs about "
                f"{_fmt(estimates['int4'].total)} and a model may use about {_fmt(budget)} there. "
                f"Use a smaller Phi model or a shorter --context-length.{moe}"
            )
        candidates = ["int4"] if profile.policy == "smallest" and "int4" in fitting else fitting

    def offers(b: str, p: str) -> bool:
        if backend_precisions is None or b not in backend_precisions:
            return True
        return p in backend_precisions[b]

    order = [backend] if backend else list(profile.backends)
    order.sort(key=lambda b: b not in installed_backends) if not backend else None
    choice = None
    for p in candidates:
        for b in order:
            if offers(b, p):
                choice = (b, p)
                break
        if choice:
            break
    if choice is None:
        raise BadInputError(f"no backend among {', '.join(order)} offers {', '.join(candidates)}")
    b, p = choice
    est = estimates[p]
    opts = dict(profile.options.get(b, {}))
    kl = (fidelity or {}).get((b, p))
    kl_text = (
        f"measured mean KL vs fp32 {kl:.2g}" if kl is not None else f"typical mean KL vs fp32 about {DEFAULT_FIDELITY[p]:.0e}"
    )
    if profile.policy == "smallest":
        policy = (f"On {profile.name} devices INT4 is the right trade: memory bandwidth and battery dominate, "
                  f"and the model must leave room for everything else")
    else:
        policy = (f"This device has room, so phi-quant picks the most faithful precision that fits "
                  f"({', '.join(q for q in candidates)} fit; {p} is the best of them)")
    installed = b in installed_backends
    reason = (
        f"For {profile.description}, a model may use about {_fmt(budget)}. {model_name} at {p} needs about "
        f"{_fmt(est.total)} (weights {_fmt(est.weights)}, KV cache {_fmt(est.kv_cache)} for {context_length} tokens, "
        f"runtime {_fmt(est.overhead)}).{moe} {policy}; {kl_text}. {b} is chosen because {profile.why or 'it serves this device'}."
        + ("" if installed else f" Install it with: pip install phi-quant-{b}.")
    )
    opt_args = " ".join(
        f"{_CLI_FLAGS[k]} {v}" if k in _CLI_FLAGS else f"--option {k}={v}" for k, v in opts.items()
    )
    stem = model_name.rstrip("/").split("/")[-1].replace(":", "-")
    command = f"phi-quant quantize {model_name} --backend {b} --precision {p} -o {stem}-{b}-{p}"
    if context_length != 4096:
        command += f" --context-length {context_length}"
    if opt_args:
        command += " " + opt_args
    alternatives = [
        {"precision": q, "total_bytes": estimates[q].total, "fits": estimates[q].total <= budget}
        for q in _PRECISION_ORDER
    ]
    return Recommendation(profile.name, b, p, opts, est, budget, reason, installed, command, alternatives)
