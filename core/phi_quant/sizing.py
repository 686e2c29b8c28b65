"""How much memory a Phi model needs at each precision: weights, KV cache and runtime overhead.

Shared by ``inspect`` (sizes per precision), ``recommend`` (what fits a device) and the Ray
runner (memory to request for a conversion task). The figures are estimates from the model's
shape, not measurements of a backend's file: each backend stores scales a little differently
(see ``bits_per_weight``), which moves sizes by a few percent.
What depends on the layout (which tensors exist and are quantized, the KV cache's shape) is the
architecture module's answer (:class:`phi_quant.arch.Architecture`); this module adds the bits
per weight of each precision and the runtime overhead.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model.config import PhiConfig

__all__ = ["bits_per_weight", "weight_bytes", "kv_cache_bytes", "MemoryEstimate", "estimate_memory",
           "largest_tensor_elements", "conversion_memory_bytes", "GIB", "format_count"]

GIB = 1024**3

#: Runtime overhead beyond weights and KV cache: activations, scratch buffers, the runtime itself.
RUNTIME_OVERHEAD_BYTES = 300 * 1024**2
RUNTIME_OVERHEAD_FRACTION = 0.05

#: A conversion's memory before its first tensor: the interpreter, numpy, the kernel and a vendor
#: runtime's imports. Whole conversions of the 1.1 GB streaming checkpoint peak at 115-180 MiB
#: (docs/performance.md); this rounds up for the bigger runtimes' imports.
CONVERSION_BASE_BYTES = 512 * 1024**2


def format_count(n: int) -> str:
    """A parameter count for people: ``41.9 B``, ``3.8 M``, ``512``."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def bits_per_weight(precision: str, group_size: int | None = None, *, asymmetric: bool = False) -> float:
    """Average stored bits per weight, scale (fp16) and zero point included.

    int4/int8 default to block 32 (GGUF Q4_0/Q8_0, MatMulNBits' default); a group of 128
    (OpenVINO's default) costs less. fp16/bf16 are 16 bits, fp32 32.
    """
    if precision == "fp32":
        return 32.0
    if precision in ("fp16", "bf16"):
        return 16.0
    bits = {"int8": 8, "int4": 4}.get(precision)
    if bits is None:
        raise ValueError(f"unknown precision {precision!r}")
    g = group_size or 32
    extra = 16.0 / g  # one fp16 scale per group
    if asymmetric:
        extra += (16.0 if bits == 8 else 4.0) / g  # MLX-style fp16 bias or a packed zero point
    return bits + extra


def weight_bytes(config: PhiConfig, precision: str, group_size: int | None = None, *, asymmetric: bool = False,
                 active: bool = False) -> int:
    """Bytes of all weights at ``precision``; norms and biases stay fp32 as every backend keeps them.

    The architecture module counts them from its tensor list (``config.arch.weight_bytes``).
    ``active``: the weights one token reads (a mixture of experts reads 2 of its experts); what
    memory must hold is always the full figure.
    """
    bpw = bits_per_weight(precision, group_size, asymmetric=asymmetric)
    return config.arch.weight_bytes(config, bpw, active=active)


def kv_cache_bytes(config: PhiConfig, context_length: int, *, bytes_per_value: int = 2) -> int:
    """KV cache for one sequence of ``context_length`` tokens (fp16 cache by default)."""
    return config.arch.kv_cache_bytes(config, context_length, bytes_per_value)


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory to run a model: weights + KV cache + overhead, in bytes."""

    precision: str
    weights: int
    kv_cache: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    def as_dict(self) -> dict[str, int | str]:
        return {
            "precision": self.precision,
            "weights_bytes": self.weights,
            "kv_cache_bytes": self.kv_cache,
            "overhead_bytes": self.overhead,
            "total_bytes": self.total,
        }


def estimate_memory(
    config: PhiConfig, precision: str, context_length: int = 4096, *, group_size: int | None = None
) -> MemoryEstimate:
    """Estimate what running ``config`` at ``precision`` with ``context_length`` tokens needs."""
    w = weight_bytes(config, precision, group_size)
    kv = kv_cache_bytes(config, min(context_length, config.max_position_embeddings))
    overhead = RUNTIME_OVERHEAD_BYTES + int(RUNTIME_OVERHEAD_FRACTION * w)
    return MemoryEstimate(precision, w, kv, overhead)


def largest_tensor_elements(config: PhiConfig) -> int:
    """Elements of the checkpoint's largest tensor, from the architecture's tensor list."""
    return max(t.numel for t in config.arch.stream_plan(config))


def conversion_memory_bytes(config: PhiConfig) -> int:
    """Memory one streaming conversion needs at most: its imports plus the largest tensor in fp32.

    Conversion reads one tensor at a time (the kernels work on row chunks of it), so what it holds
    does not grow with the layer count or the precision; the conformance kit's streaming check
    measures exactly that for every backend.
    """
    return CONVERSION_BASE_BYTES + 4 * largest_tensor_elements(config)
