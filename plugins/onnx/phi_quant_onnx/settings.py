"""Turn the user's :class:`ExportOptions` into the concrete choices of one ONNX export.

Every refusal happens here, before a byte is written, with a message naming the option to change.
Backend options (``--option key=value``): ``block_size`` (MatMulNBits block, default 32; also
``--group-size``), ``accuracy_level`` (0-4, default 4 on cpu, 0 elsewhere), ``lm_head`` and
``embeddings`` (storage of those two tensors: int4, int8, fp16, fp32, bf16), ``context_length``
(rows of the rotary caches and genai's default max_length; also ``--context-length``),
``rotary`` (auto, fused or op: where the rotary embedding runs; auto fuses it into attention
whenever ONNX Runtime's kernel accepts the head shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.model.config import PhiConfig
from phi_quant.model.tensors import TensorRole
from phi_quant.types import ExportOptions, OptionSpec

from .constants import ACCURACY_LEVELS, TARGETS

__all__ = ["OnnxSettings", "settings_from_options", "STORAGE_KINDS", "KNOWN_EXTRA", "OPTIONS", "BLOCK_SIZES"]

#: How one weight can be stored: float copies, or MatMulNBits blocks.
STORAGE_KINDS = ("fp32", "fp16", "bf16", "int8", "int4")
ROTARY_CHOICES = ("auto", "fused", "op")
DEFAULT_BLOCK_SIZE = 32
#: MatMulNBits block sizes (a power of two >= 16; ONNX Runtime's kernels stop at 256).
BLOCK_SIZES = (16, 32, 64, 128, 256)
_INT = ("int4", "int8")

#: Every ``--option`` of this backend, as the core checks it before export (see the module doc).
OPTIONS = (
    OptionSpec("block_size", "int", "MatMulNBits block size (also --group-size)", DEFAULT_BLOCK_SIZE, BLOCK_SIZES,
               precisions=_INT),
    OptionSpec("accuracy_level", "int", "MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8",
               choices=tuple(ACCURACY_LEVELS), precisions=_INT),
    OptionSpec("lm_head", "str", "storage of lm_head", choices=STORAGE_KINDS),
    OptionSpec("embeddings", "str", "storage of the embedding table", choices=STORAGE_KINDS),
    OptionSpec("context_length", "int", "rows of the rotary caches (also --context-length)", min=1),
    OptionSpec("symmetric", "bool", "symmetric MatMulNBits (also --symmetric/--asymmetric)", True, precisions=_INT),
    OptionSpec("target", "str", "execution provider the graph is built for (also --target)", "cpu", TARGETS),
    OptionSpec("rotary", "str", "where the rotary embedding runs", "auto", ROTARY_CHOICES),
)
KNOWN_EXTRA = tuple(o.name for o in OPTIONS)


@dataclass(frozen=True)
class OnnxSettings:
    """Resolved choices for one export (what the graph builder and writer follow)."""

    precision: str
    target: str = "cpu"
    io_dtype: str = "fp32"  # activations, KV cache, norms, rotary caches
    body: str = "fp32"  # storage of the decoder-layer MatMul weights
    lm_head: str = "fp32"
    embeddings: str = "fp32"
    block_size: int = DEFAULT_BLOCK_SIZE
    symmetric: bool = True
    accuracy_level: int = 4
    context_length: int | None = None
    rotary: str = "auto"
    threads: int | None = None  # kernel threads while quantizing (None: the kernel's default)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def quantized(self) -> bool:
        return self.body in ("int4", "int8")

    @staticmethod
    def bits(kind: str) -> int:
        return {"int4": 4, "int8": 8}[kind]

    def nbits_scheme(self, kind: str) -> str:
        sym = "sym" if self.symmetric else "asym"
        return f"MatMulNBits-{self.bits(kind)}bit-b{self.block_size}-{sym}"

    def storage_for(self, role: TensorRole) -> str:
        """How a tensor of ``role`` is stored: the one per-tensor choice the quantize hook and the
        graph builders both follow (norms and biases in the activation type; the embedding and
        lm_head as chosen; a mixture-of-experts router in float, see :meth:`router_storage`;
        every other MatMul weight, experts included, as the body)."""
        if role.is_norm or role.is_bias:
            return self.io_dtype
        if role == TensorRole.ROUTER:
            return self.router_storage
        if role == TensorRole.EMBED:
            return self.embeddings
        if role == TensorRole.LM_HEAD:
            return self.lm_head
        return self.body

    @property
    def router_storage(self) -> str:
        """The router's storage: the precision's own for float exports, the activation type for int4/int8.

        The router is [experts, hidden] (65,536 of Phi-3.5-MoE's 42 billion weights): quantizing it
        saves nothing worth having and moves the logits that decide which experts run.
        """
        return self.body if self.body in ("fp32", "fp16", "bf16") else self.io_dtype

    @property
    def scheme(self) -> str:
        if self.quantized:
            return self.nbits_scheme(self.body)
        return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[self.body]


def _storage(value: Any, what: str) -> str:
    text = str(value).lower()
    if text not in STORAGE_KINDS:
        raise UnsupportedPrecisionError(f"--option {what}={value!r} is not one of {', '.join(STORAGE_KINDS)}")
    return text


def settings_from_options(options: ExportOptions, config: PhiConfig | None = None) -> OnnxSettings:
    """Validate ``options`` and fill in this backend's defaults."""
    precision = options.precision
    if precision not in STORAGE_KINDS:
        raise UnsupportedPrecisionError(
            f"the onnx backend exports fp32, fp16, bf16, int8 and int4, not {precision!r}"
        )
    unknown = sorted(set(options.extra) - set(KNOWN_EXTRA))
    if unknown:
        raise UnsupportedPrecisionError(
            f"unknown onnx option(s) {', '.join(unknown)}; known: {', '.join(KNOWN_EXTRA)}"
        )
    if options.scheme and options.scheme not in _accepted_schemes(precision):
        raise UnsupportedPrecisionError(
            f"the onnx backend has no scheme {options.scheme!r} for {precision}; "
            f"choose one of: {', '.join(_accepted_schemes(precision))}"
        )
    target = str(options.target or options.get("target") or "cpu").lower()
    if target not in TARGETS:
        raise UnsupportedPrecisionError(f"onnx target {target!r} is unknown; choose one of: {', '.join(TARGETS)}")
    notes: list[str] = []
    # CPU kernels run float32 activations (weights stored narrower are widened once at load);
    # GPU providers run float16 activations, as onnxruntime-genai's builder does.
    io_dtype = "fp32" if target == "cpu" else "fp16"
    if target != "cpu":
        notes.append(f"target {target} is exported with fp16 activations but was not run here (untested)")
        if precision == "bf16":
            raise UnsupportedPrecisionError(
                f"bf16 is offered for the cpu target only; use --precision fp16 for {target}"
            )

    block_size = options.group_size or options.get("block_size") or DEFAULT_BLOCK_SIZE
    try:
        block_size = int(block_size)
    except (TypeError, ValueError):
        raise UnsupportedPrecisionError(f"block size must be an integer, got {block_size!r}") from None
    if block_size < 16 or block_size & (block_size - 1):
        raise UnsupportedPrecisionError(
            f"MatMulNBits block size must be a power of two >= 16 (16, 32, 64, 128, 256), got {block_size}"
        )
    symmetric = options.symmetric
    if symmetric is None and "symmetric" in options.extra:
        symmetric = bool(options.extra["symmetric"])
    if symmetric is None:
        symmetric = True  # onnxruntime-genai's builder default
    level = options.get("accuracy_level")
    if level is None:
        level = 4 if target == "cpu" else 0
    try:
        level = int(level)
    except (TypeError, ValueError):
        raise UnsupportedPrecisionError(f"accuracy_level must be 0-4, got {level!r}") from None
    if level not in ACCURACY_LEVELS:
        raise UnsupportedPrecisionError(
            f"accuracy_level must be one of {', '.join(f'{k} ({v})' for k, v in ACCURACY_LEVELS.items())}, got {level}"
        )

    body = precision
    if config is not None and config.is_moe and body in _INT:
        sizes = (config.hidden_size, config.intermediate_size)
        if any(n % block_size for n in sizes):
            fits = [b for b in BLOCK_SIZES if not any(n % b for n in sizes)]
            raise UnsupportedPrecisionError(
                f"QMoE (onnxruntime's quantized mixture-of-experts op) needs hidden_size {sizes[0]} and the experts' "
                f"intermediate_size {sizes[1]} to be multiples of the block size {block_size}: "
                + (f"use --group-size {' or '.join(map(str, fits))}" if fits else "no MatMulNBits block size divides both; "
                   "export fp16 or fp32")
            )
    lm_head = _storage(options.get("lm_head", body), "lm_head")
    tied = bool(config and config.tie_word_embeddings)
    default_embed = lm_head if tied else (body if body in ("fp32", "fp16", "bf16") else "fp16")
    if default_embed in ("int4", "int8") and target == "dml":
        default_embed = "fp16"
    embeddings = _storage(options.get("embeddings", default_embed), "embeddings")
    if target != "cpu":
        for what, kind in (("lm_head", lm_head), ("embeddings", embeddings)):
            if kind == "bf16":
                raise UnsupportedPrecisionError(f"--option {what}=bf16 is offered for the cpu target only")
    if tied and embeddings != lm_head:
        notes.append(
            f"embeddings are tied but stored twice: lookup table as {embeddings}, lm_head as {lm_head}"
        )
    ctx = options.context_length or options.get("context_length")
    if ctx is not None:
        ctx = int(ctx)
        if ctx <= 0:
            raise UnsupportedPrecisionError(f"context_length must be positive, got {ctx}")
    rotary = str(options.get("rotary", "auto")).lower()
    if rotary not in ROTARY_CHOICES:
        raise UnsupportedPrecisionError(f"--option rotary={rotary!r} is not one of {', '.join(ROTARY_CHOICES)}")
    return OnnxSettings(
        rotary=rotary,
        threads=options.threads,
        precision=precision,
        target=target,
        io_dtype=io_dtype,
        body=body,
        lm_head=lm_head,
        embeddings=embeddings,
        block_size=block_size,
        symmetric=bool(symmetric),
        accuracy_level=level,
        context_length=ctx,
        notes=tuple(notes),
    )


def _accepted_schemes(precision: str) -> tuple[str, ...]:
    if precision in ("int4", "int8"):
        bits = 4 if precision == "int4" else 8
        return (f"MatMulNBits-{bits}bit", "MatMulNBits")
    return ({"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision],)
