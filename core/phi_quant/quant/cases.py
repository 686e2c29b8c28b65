"""Weights shared by the kernel tests and bench: random checkpoint-like tensors and edge cases."""

from __future__ import annotations

import numpy as np

from phi_quant.quant import reference as R

SRC_DTYPES = ("f32", "f16", "bf16")


def encode(w: np.ndarray, src: str) -> np.ndarray:
    """Store float32 values as a checkpoint would: f32, f16 (RNE) or bf16 bits (RNE)."""
    if src == "f32":
        return np.ascontiguousarray(w, dtype=np.float32)
    if src == "f16":
        with np.errstate(over="ignore"):
            return w.astype(np.float16)
    return R.f32_to_bf16_bits(w)


def random_weight(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Gaussian weights with a few heavy outliers, as in real checkpoints."""
    w = (rng.standard_normal((n, k)) * 0.03).astype(np.float32)
    w[rng.random((n, k)) < 0.002] *= 40
    return w


def edge_weight(n: int = 24, k: int = 256) -> np.ndarray:
    """One row per awkward case (all zero, constant, signed zeros, ties, subnormals, ...)."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((n, k)) * 0.03).astype(np.float32)
    w[0] = 0.0
    w[1] = 0.25  # constant positive block
    w[2] = -0.75  # constant negative block
    w[3] = -0.0
    w[4, ::2] = -0.0  # signed zeros mixed
    w[4, 1::2] = 0.0
    w[5] = np.tile(np.float32([1.0, -1.0]), k // 2)  # |max| == |min|: first-wins / tie rules
    w[6] = np.tile(np.float32([-1.0, 1.0]), k // 2)
    w[7] = np.float32(1e-40)  # float32 subnormals
    w[8, : k // 2] = np.float32(-3e-39)
    w[9] = np.float32(1e-38)  # near the smallest normal: 1/scale overflows in some formats
    w[10] = np.arange(k, dtype=np.float32) * np.float32(0.5) - np.float32(32)  # exact halves: rounding ties
    w[11] = np.arange(k, dtype=np.float32) / np.float32(15)
    w[12, 0] = 40.0  # one outlier
    w[13] = np.float32(3e4)  # large but every format's scale still fits
    w[14, ::3] = np.float32(-3e4)
    w[15] = np.float32(6e-8)  # f16 subnormal range
    w[16, 5] = np.float32(-7.0)
    w[16, 9] = np.float32(7.0)
    return w


def huge_weight(k: int = 256) -> np.ndarray:
    """Values so large that a float16 scale overflows (float32 scales still fit)."""
    w = np.zeros((2, k), np.float32)
    w[0, 3] = 3e37
    w[1, :] = -1e36
    return w
