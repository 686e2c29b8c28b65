"""How one tensor is stored: the backend's per-tensor choice, in one format-neutral record.

A backend decides, for every tensor, a :class:`Scheme`: the kernel layout that writes its bytes,
the bits per code, the group (elements per scale along K), symmetric or not and the dtype the
scales are stored in, or a float dtype (``keep-float``), or a type only the vendor's own
quantizer makes (``native``, e.g. ggml K-quants). Recipes (:mod:`phi_quant.quant.recipes`) read
the scheme's *grid* (code range, how the zero is stored) to choose values the format can hold,
and :func:`phi_quant.quant.values.pack` writes them in the layout's bytes.

Every layout reconstructs a weight as ``scale * (code - zero)`` or ``scale * code + offset``:

============  ===============================================  ==========================
layout        codes and zero                                   stored scale / zero
============  ===============================================  ==========================
ggml Q4_0     nibbles 0..15, zero fixed at 8                    fp16 d
ggml Q8_0     int8 -128..127, zero 0                            fp16 d
ggml Q4_1     nibbles 0..15, w = d*q + m                        fp16 d, fp16 m (offset)
matmulnbits   0..2^b-1; zero 2^(b-1) (sym) or a uint8 per block  f32/f16 scale, uint8 zero
mlx           0..2^b-1, w = s*q + b                             s and b in the model dtype
nncf          sym: -2^(b-1)..2^(b-1)-1; asym: 0..2^b-1, uint8    f16 scale (+ u4/u8 zero)
============  ===============================================  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Scheme", "LAYOUTS", "ZERO_FIXED", "ZERO_INT", "ZERO_OFFSET", "GGML_BLOCKS"]

FLOAT, GGML, MATMULNBITS, MLX, NNCF, NATIVE = "float", "ggml", "matmulnbits", "mlx", "nncf", "native"
#: Layouts: a float copy, one of the kernel's packers, or a vendor quantizer the backend calls.
LAYOUTS = (FLOAT, GGML, MATMULNBITS, MLX, NNCF, NATIVE)

#: How a layout stores the zero of each group.
ZERO_FIXED = "fixed"  # one constant for the whole format (symmetric)
ZERO_INT = "int"  # an integer code per group (asymmetric MatMulNBits, NNCF)
ZERO_OFFSET = "offset"  # a float offset per group (ggml Q4_1's m, mlx's bias)

#: ggml block types the kernel packs: elements per block, bytes per block.
GGML_BLOCKS = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q8_0": (32, 34)}

_SCALE_BYTES = {"f32": 4, "f16": 2, "bf16": 2}
_FLOAT_BITS = {"f32": 32, "f16": 16, "bf16": 16}


@dataclass(frozen=True)
class Scheme:
    """One tensor's storage. Build it with the class methods; compare and hash it freely.

    ``name`` is the format's own spelling ("Q4_0", "int4_asym_g128", ...), shown in manifests.
    ``block`` (ggml and native types) is (elements per block, bytes per block).
    """

    layout: str
    bits: int
    group: int | None = None  # None: one scale per row (per output channel)
    symmetric: bool = True
    scale_dtype: str = "f16"
    name: str = ""
    block: tuple[int, int] | None = None

    # -- constructors ----------------------------------------------------------------------------
    @classmethod
    def keep_float(cls, dtype: str, name: str | None = None) -> "Scheme":
        """A float copy in ``dtype`` ("f32", "f16", "bf16")."""
        return cls(FLOAT, _FLOAT_BITS[dtype], scale_dtype=dtype, name=name or dtype)

    @classmethod
    def ggml(cls, type_name: str) -> "Scheme":
        """A ggml block type the kernel packs (Q4_0, Q4_1, Q8_0)."""
        bits = 8 if type_name == "Q8_0" else 4
        return cls(GGML, bits, 32, type_name != "Q4_1", "f16", type_name, GGML_BLOCKS[type_name])

    @classmethod
    def native(cls, name: str, block: tuple[int, int], bits: int) -> "Scheme":
        """A type only the vendor's quantizer writes (ggml K-quants): values are the vendor's."""
        return cls(NATIVE, bits, block[0], True, "f16", name, block)

    @classmethod
    def matmulnbits(cls, bits: int, block_size: int, symmetric: bool, scale_dtype: str = "f32") -> "Scheme":
        sym = "sym" if symmetric else "asym"
        return cls(MATMULNBITS, bits, block_size, symmetric, scale_dtype, f"MatMulNBits-{bits}bit-b{block_size}-{sym}")

    @classmethod
    def mlx(cls, bits: int, group_size: int, scale_dtype: str) -> "Scheme":
        return cls(MLX, bits, group_size, False, scale_dtype, f"affine-int{bits}-g{group_size}")

    @classmethod
    def nncf(cls, bits: int, symmetric: bool, group_size: int | None, scale_dtype: str = "f16") -> "Scheme":
        mode = f"int{bits}_{'sym' if symmetric else 'asym'}"
        return cls(NNCF, bits, group_size, symmetric, scale_dtype, f"{mode}_g{group_size}" if group_size else f"{mode}_cw")

    # -- what the format can hold ----------------------------------------------------------------
    @property
    def is_float(self) -> bool:
        return self.layout == FLOAT

    @property
    def packed_by_kernel(self) -> bool:
        """True when phi-quant's kernel writes this layout (so any recipe's values can be packed)."""
        return self.layout in (GGML, MATMULNBITS, MLX, NNCF)

    @property
    def zero_kind(self) -> str | None:
        """:data:`ZERO_FIXED`, :data:`ZERO_INT` or :data:`ZERO_OFFSET` (None for float/native)."""
        if not self.packed_by_kernel:
            return None
        if self.layout == MLX or self.name == "Q4_1":
            return ZERO_OFFSET
        return ZERO_FIXED if self.symmetric else ZERO_INT

    def code_range(self) -> tuple[int, int]:
        """Smallest and largest code the layout stores."""
        if self.layout == GGML:
            return (-128, 127) if self.name == "Q8_0" else (0, 15)
        if self.layout == NNCF and self.symmetric:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1

    def fixed_zero(self) -> int:
        """The zero of a symmetric layout (meaningless for the others)."""
        if self.layout == GGML:
            return 8 if self.name == "Q4_0" else 0
        if self.layout == MATMULNBITS:
            return 1 << (self.bits - 1)
        return 0

    def group_of(self, k: int) -> int:
        """Elements per scale for a row of ``k`` elements."""
        return k if self.group is None else self.group

    def groups(self, k: int) -> int:
        """Scales per row (MatMulNBits pads a partial last block)."""
        g = self.group_of(k)
        return -(-k // g)

    # -- size ------------------------------------------------------------------------------------
    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes this tensor takes in the output (data, scales and zero points)."""
        rows = 1
        for d in shape[:-1]:
            rows *= d
        k = shape[-1] if shape else 1
        if self.layout == FLOAT:
            return rows * k * self.bits // 8
        if self.layout in (GGML, NATIVE):
            size, nbytes = self.block or (1, 4)
            return rows * (k // size) * nbytes
        g, s = self.groups(k), _SCALE_BYTES[self.scale_dtype]
        if self.layout == MATMULNBITS:
            data = rows * g * (self.group_of(k) * self.bits // 8)
            zeros = 0 if self.symmetric else rows * ((g * self.bits + 7) // 8)
            return data + rows * g * s + zeros
        if self.layout == MLX:
            return rows * k * self.bits // 8 + 2 * rows * g * s
        zeros = 0 if self.symmetric else (rows * g * self.bits + 7) // 8
        return (rows * k * self.bits + 7) // 8 + rows * g * s + zeros

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        n = 1
        for d in shape:
            n *= d
        return 8.0 * self.nbytes(shape) / max(n, 1)

    def describe(self) -> dict:
        """A JSON-ready record of the scheme (for manifests)."""
        out = {"scheme": self.name, "layout": self.layout, "bits": self.bits}
        if not self.is_float:
            out.update(group=self.group, symmetric=self.symmetric, scale_dtype=self.scale_dtype)
        return out
