"""Plain data types that cross the plugin boundary (hook arguments and results)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = [
    "PRECISIONS",
    "HOOK_CONTRACT_VERSION",
    "DEFAULT_ARCHITECTURES",
    "BackendInfo",
    "OptionSpec",
    "OPTION_KINDS",
    "PrecisionSpec",
    "HardwareReport",
    "ExportOptions",
    "ExportResult",
    "QuantizedTensor",
    "LoadedModel",
    "Progress",
    "FidelityThresholds",
]

#: Precisions the CLI knows. Backends declare which they offer (``bf16`` only where the format has it).
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")

#: Version of the hook contract. A plugin declares the versions it was built for in
#: :attr:`BackendInfo.hook_contract`; the core refuses a plugin whose major version differs.
#: 1.1 added :attr:`BackendInfo.architectures` and the option declarations
#: (``BackendInfo.options``/``targets``, ``PrecisionSpec.group_sizes``/``symmetric``); a 1.0 plugin
#: leaves them undeclared. 1.2 added :attr:`PrecisionSpec.arch_thresholds`; 1.3 the ``quantize``
#: hook's ``source`` argument, :attr:`ExportOptions.recipe` / ``bits_per_weight`` / ``policy`` and
#: :attr:`ExportResult.quantization`; 1.4 the optional ``tensor_plan`` hook (calibrated recipes
#: search against the backend's schemes) and the ``calibration*`` options.
HOOK_CONTRACT_VERSION = "1.4"

#: What a backend writes when it does not say: plugins built for contract 1.0 wrote Phi3ForCausalLM.
DEFAULT_ARCHITECTURES = ("phi3",)

#: Value kinds of :class:`OptionSpec`: ``any`` is passed on unchanged (text or structured values
#: the backend parses itself, such as a per-tensor override list).
OPTION_KINDS = ("int", "float", "bool", "str", "any")


@dataclass(frozen=True)
class FidelityThresholds:
    """Bounds a backend promises for one precision, checked by the conformance kit.

    ``kl_max`` is the mean KL(oracle||backend) over next-token distributions, ``top1_min`` the
    fraction of positions whose argmax agrees, ``max_abs_logit`` (optional) the largest |Δlogit|.
    """

    kl_max: float
    top1_min: float
    max_abs_logit: float | None = None


@dataclass(frozen=True)
class PrecisionSpec:
    """One precision a backend offers and the native scheme it maps to.

    ``group_sizes`` and ``symmetric`` declare which ``--group-size`` values and which of
    ``--symmetric``/``--asymmetric`` this precision accepts; the core refuses anything else before
    export. ``()`` means the option does not apply (it is refused); ``None`` leaves the check to
    the backend (what a plugin written for contract 1.0 gets).

    ``thresholds`` bound every architecture the backend writes unless ``arch_thresholds`` has
    its own entry for one (``{"phimoe": FidelityThresholds(...)}``): for a runtime that computes
    an architecture with a documented difference from the model, the bounds measured for it.
    """

    precision: str  # one of PRECISIONS
    scheme: str  # backend-native name, e.g. "Q4_0", "MatMulNBits-4bit-b32", "int4_asym_g128"
    description: str = ""
    schemes: tuple[str, ...] = ()  # other schemes selectable with --scheme for this precision
    thresholds: FidelityThresholds | None = None
    default_group_size: int | None = None
    group_sizes: tuple[int, ...] | None = None  # accepted --group-size values (.. versionadded:: 1.1)
    symmetric: tuple[bool, ...] | None = None  # accepted --symmetric (True) / --asymmetric (False) (1.1)
    arch_thresholds: dict[str, FidelityThresholds] = field(default_factory=dict, hash=False)  # .. versionadded:: 1.2

    def thresholds_for(self, architecture: str) -> FidelityThresholds | None:
        """The bounds for a model of ``architecture`` (an ``arch`` name)."""
        return self.arch_thresholds.get(architecture, self.thresholds)


@dataclass(frozen=True)
class OptionSpec:
    """One ``--option NAME=VALUE`` a backend accepts; the core checks it before export.

    ``kind`` is one of :data:`OPTION_KINDS`; the value reaches the backend converted to it
    (``"4"`` -> 4 for an int, a choice in its declared spelling). ``choices`` and ``min``/``max``
    bound the value; ``precisions`` (empty: all) lists the precisions the option applies to, and
    it is refused for the others instead of being ignored.

    .. versionadded:: 1.1
    """

    name: str
    kind: str = "str"
    help: str = ""
    default: Any = None
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    precisions: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackendInfo:
    """Who a backend is. Returned by the ``backend_info`` hook.

    ``architectures`` names the architectures the backend writes (``phi_quant.arch`` names:
    ``"phi3"``; see ``phi-quant inspect``). The core refuses to hand it a checkpoint of any other
    before ``export`` is called. Default: ``("phi3",)``, what every 1.0 plugin wrote.
    """

    name: str  # CLI name: "llamacpp", "onnx", "openvino", "mlx", ...
    format: str  # output format: "GGUF", "ONNX", "OpenVINO IR", "MLX safetensors"
    runtime: str  # the vendor runtime that runs the output: "llama.cpp", "onnxruntime-genai", ...
    distribution: str = ""  # PyPI distribution name, filled by the core from entry-point metadata if empty
    version: str = ""
    description: str = ""
    hook_contract: str = HOOK_CONTRACT_VERSION  # contract version the plugin was built for
    install_hint: str = ""  # e.g. "pip install phi-quant-llamacpp"
    architectures: tuple[str, ...] = DEFAULT_ARCHITECTURES  # .. versionadded:: contract 1.1
    #: Every ``--option`` the backend accepts; unknown names are refused with this list. ``None``: not
    #: declared, the backend checks ``extra`` itself (contract 1.0). .. versionadded:: 1.1
    options: tuple[OptionSpec, ...] | None = None
    #: ``--target`` values the backend accepts; ``()`` refuses ``--target``; ``None``: not declared (1.1).
    targets: tuple[str, ...] | None = None

    def writes(self, architecture: str) -> bool:
        """True when this backend writes checkpoints of ``architecture`` (an ``arch`` name)."""
        return architecture in self.architectures


@dataclass
class HardwareReport:
    """What a backend can use on this machine (``detect_hardware``)."""

    backend: str
    available: bool
    devices: list[dict[str, Any]] = field(default_factory=list)  # e.g. [{"name": "CPU", "type": "cpu", ...}]
    accelerators: list[str] = field(default_factory=list)  # e.g. ["metal"], ["CUDAExecutionProvider"]
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportOptions:
    """What the user asked for; backends read the fields they understand and refuse bad values.

    ``extra`` carries backend-specific options (``--option key=value`` on the CLI), for example
    ``{"scheme": "Q4_K_M"}`` or ``{"accuracy_level": 4}``. ``recipe`` names the core rule that
    chooses quantized values (:mod:`phi_quant.quant.recipes`; None: round to nearest);
    ``bits_per_weight`` asks for a size budget and ``policy`` for a named per-tensor policy
    (:mod:`phi_quant.quant.budget`), both expressed in the backend's own mixed-precision means.
    """

    precision: str
    group_size: int | None = None  # None: the backend's default
    symmetric: bool | None = None  # None: the backend's default
    scheme: str | None = None  # backend-native scheme override, e.g. "Q4_K_M"
    context_length: int | None = None  # the context the user will deploy with (LongRoPE choices)
    target: str | None = None  # e.g. "cpu", "cuda", "dml", "npu"
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None  # None: "rtn", the vendors' round to nearest
    bits_per_weight: float | None = None  # a size budget, in bits of tensor data per parameter
    policy: str | None = None  # a named per-tensor policy, e.g. "q4_k_m"; None: the backend's default
    #: Calibration (recipes awq, gptq and their combinations; .. versionadded:: contract 1.4): a text
    #: file (None: phi_quant.texts.calibration_text()), how many of its tokens, and a statistics cache file.
    calibration: str | None = None
    calibration_tokens: int | None = None
    calibration_cache: str | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.extra.get(key, default)


@dataclass
class ExportResult:
    """What ``export`` wrote, for the manifest and the model card."""

    files: list[str]  # paths relative to the output directory
    scheme: str  # the native scheme actually used, e.g. "Q4_0"
    details: dict[str, Any] = field(default_factory=dict)  # per-tensor choices, fallbacks, notes
    run_instructions: str = ""  # Markdown: how to run the output in the vendor runtime
    notes: list[str] = field(default_factory=list)  # things the user should know (fallbacks, caveats)
    #: The per-tensor plan as written: recipe, bits per weight and one record per tensor (scheme,
    #: bytes, bits per weight, sha256 of the bytes written), from ``TensorPlan.summary``.
    quantization: dict[str, Any] | None = None


@dataclass
class QuantizedTensor:
    """A tensor after a backend's ``quantize``: named arrays in the format's layout plus the scheme.

    ``arrays`` holds packed data and scales exactly as they will be written, e.g.
    ``{"blocks": uint8[...]}`` for GGUF Q4_0, ``{"weight": uint32, "scales": f16, "biases": f16}`` for MLX.
    ``dequantize`` returns float32 of the original shape (for eval and tests).
    """

    name: str
    scheme: str
    shape: tuple[int, ...]
    arrays: dict[str, np.ndarray]
    dequantize: Callable[[], np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Progress(Protocol):
    """Progress sink handed to ``export``. ``advance`` takes bytes of source tensors consumed."""

    def start(self, total_bytes: int, description: str = "") -> None: ...
    def advance(self, nbytes: int, item: str = "") -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    """A Progress that ignores everything (library use, tests)."""

    def start(self, total_bytes: int, description: str = "") -> None:
        pass

    def advance(self, nbytes: int, item: str = "") -> None:
        pass

    def finish(self) -> None:
        pass


@runtime_checkable
class LoadedModel(Protocol):
    """An exported model opened in its vendor runtime (``load_model`` hook).

    ``logits`` runs the full sequence and returns float32 ``[len(ids), vocab]`` next-token
    logits at every position (vocab = the model's vocab_size rows). ``generate`` returns text,
    greedy by default, stopping at the model's end tokens.
    """

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]: ...
    def detokenize(self, ids: Sequence[int]) -> str: ...
    def logits(self, ids: Sequence[int]) -> np.ndarray: ...
    def generate(self, prompt: str, max_new_tokens: int = 32, *, chat: bool = False) -> str: ...
    def close(self) -> None: ...
