"""Data-free sensitivity: how much error each candidate scheme leaves in each tensor.

For a size budget (:func:`budget_choice`) every matrix is quantized once per scheme of its
backend's menu (round to nearest: the kernel's fast path, or the vendor's quantizer for native
types), streaming one tensor and one row chunk at a time, and the relative error

    Σ gⱼ² (W - Ŵ)²ᵢⱼ / Σ gⱼ² Wᵢⱼ²

is recorded, where gⱼ is the RMSNorm gain that scales input channel j when a norm feeds the
matmul (1 otherwise): the error the matmul's output would see for normalised inputs. The
budget then goes where the sum of these errors falls most per byte (:func:`~.budget.allocate`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from phi_quant.quant import reference
from phi_quant.quant.budget import Candidate, allocate
from phi_quant.quant.plan import feeding_norm
from phi_quant.quant.scheme import Scheme
from phi_quant.quant.values import dequantize, quantize

__all__ = ["tensor_errors", "budget_choice", "CHUNK_ELEMENTS"]

CHUNK_ELEMENTS = 1 << 21

Roundtrip = Callable[[np.ndarray, Scheme], np.ndarray]


def _importance(source: Any, info) -> np.ndarray | None:
    found = feeding_norm(info, bool(source.config.tie_word_embeddings))
    if found is None:
        return None
    return (source.tensor(*found).to_float32().astype(np.float64) ** 2)


def tensor_errors(tensor, menu: list[Scheme], native_roundtrip: Roundtrip | None = None,
                  importance: np.ndarray | None = None) -> list[float]:
    """Relative (importance-weighted) squared error of ``tensor`` under each scheme of ``menu``."""
    raw = tensor.raw()
    rows = raw.reshape(-1, raw.shape[-1])
    step = max(1, CHUNK_ELEMENTS // rows.shape[1])
    err = np.zeros(len(menu))
    ref = 0.0
    imp = None if importance is None else importance[None, :]
    for r0 in range(0, rows.shape[0], step):
        chunk = rows[r0 : r0 + step]
        w = reference.decode(chunk, tensor.dtype).astype(np.float32)
        w2 = w.astype(np.float64) ** 2
        ref += float((w2 * imp).sum() if imp is not None else w2.sum())
        for i, s in enumerate(menu):
            if s.layout == "native":
                recon = native_roundtrip(w, s)
            else:
                recon = dequantize(quantize(chunk, tensor.dtype, s, name=tensor.name), s, chunk.shape)
            d = (w - recon).astype(np.float64) ** 2
            err[i] += float((d * imp).sum() if imp is not None else d.sum())
    return list(err / max(ref, 1e-300))


def budget_choice(source: Any, menus: dict[str, list[Scheme]], bits_per_weight: float,
                  native_roundtrip: Roundtrip | None = None, fixed_bytes: int | None = None,
                  weighted: bool = True) -> dict[str, Scheme]:
    """One scheme per tensor of ``menus`` so that all tensor data is about ``bits_per_weight``.

    ``fixed_bytes``: bytes of the tensors not in ``menus`` (default: those tensors at float32).
    The budget counts every parameter of the checkpoint.
    """
    infos = source.tensor_infos()
    params = sum(i.numel for i in infos)
    if fixed_bytes is None:
        fixed_bytes = sum(i.numel * 4 for i in infos if i.name not in menus)
    table = []
    for tensor in source.tensors():
        menu = menus.get(tensor.name)
        if not menu:
            continue
        imp = _importance(source, tensor) if weighted else None
        errors = tensor_errors(tensor, menu, native_roundtrip, imp)
        shape = tuple(tensor.shape)
        table.append((tensor.name, [Candidate(s, s.nbytes(shape), e) for s, e in zip(menu, errors)]))
    picked = allocate(table, bits_per_weight * params / 8.0, fixed_bytes)
    return {name: c.scheme for name, c in picked.items()}
