"""Mixed precision: named per-tensor policies and a size budget, for every backend.

A backend describes, per tensor, the schemes its format can store (its *menu*, from the
cheapest up); this module chooses one per tensor:

- a **policy** gives each tensor a *level* (the bits it should get at least) from its role and
  layer, and the backend's menu turns the level into its own means: a GGUF type, MatMulNBits
  bits, an NNCF backup layer, mlx per-module bits. ``q4_k_m`` is llama.cpp's Q4_K_M rule
  (``llama_tensor_get_type``, as the installed llama.cpp applies it to phi3): the output matrix
  (a tied embedding) at 6 bits, the fused qkv and ``ffn_down`` at 6 in the first and last eighth
  of the layers and every third one between, the rest at 4.
- a **budget** (``--bits-per-weight X``) starts every tensor at its cheapest scheme and spends
  the remaining bytes where a data-free sensitivity says they buy the most: the relative
  squared error each scheme leaves in the weight (round to nearest, weighted by the input
  channel importance when known), per byte. The greedy exchange walks each tensor's lower
  convex hull of (bytes, error), the classic marginal-analysis solution of this knapsack.

The size counted is tensor data (weights, scales, zero points): bits per weight = 8 x bytes /
parameters, as llama.cpp reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from phi_quant.errors import BadInputError, UnsupportedPrecisionError
from phi_quant.model.tensors import TensorInfo, TensorRole
from phi_quant.quant.scheme import Scheme

__all__ = ["POLICY_NAMES", "check_budget_options", "policy_level", "pick_for_level", "allocate", "Candidate",
           "MIN_BITS_PER_WEIGHT", "MAX_BITS_PER_WEIGHT"]

#: Named policies (``--policy``): ``default`` is the backend's own default plan.
POLICY_NAMES = ("default", "uniform", "q4_k_m")

MIN_BITS_PER_WEIGHT = 2.0
MAX_BITS_PER_WEIGHT = 32.0


def check_budget_options(options) -> None:
    """Refuse a budget or policy no backend could meet, before any work is done."""
    bpw = getattr(options, "bits_per_weight", None)
    policy = getattr(options, "policy", None)
    if bpw is not None:
        if not MIN_BITS_PER_WEIGHT <= float(bpw) <= MAX_BITS_PER_WEIGHT:
            raise BadInputError(f"--bits-per-weight must be between {MIN_BITS_PER_WEIGHT:g} and "
                                f"{MAX_BITS_PER_WEIGHT:g}, got {bpw}")
        if policy not in (None, "default"):
            raise BadInputError("--bits-per-weight chooses every tensor's bits itself; drop --policy")
    if policy is not None and policy not in POLICY_NAMES:
        raise BadInputError(f"unknown policy {policy!r}; choose one of: {', '.join(POLICY_NAMES)}")


def _use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the ffn_down layers that get more bits in its K-quant mixes."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def policy_level(policy: str, info: TensorInfo, n_layers: int, tied: bool, base_bits: int) -> int:
    """The bits a tensor should get at least under ``policy`` (``base_bits``: the precision's)."""
    role = TensorRole(info.role)
    if policy == "q4_k_m" and base_bits <= 4:
        if role == TensorRole.LM_HEAD or (tied and role == TensorRole.EMBED):
            return 6
        if role in (TensorRole.QKV, TensorRole.V, TensorRole.DOWN) and info.layer is not None and _use_more_bits(info.layer, n_layers):
            return 6
        return 4
    return base_bits


def pick_for_level(menu: Sequence[Scheme], level: int) -> Scheme:
    """The cheapest scheme of ``menu`` that stores at least ``level`` bits per code (else the richest)."""
    fitting = [s for s in menu if s.bits >= level]
    return fitting[0] if fitting else menu[-1]


@dataclass(frozen=True)
class Candidate:
    """One scheme a tensor may take in a budget, with its cost and its data-free error."""

    scheme: Scheme
    nbytes: int
    error: float


def allocate(tensors: Sequence[tuple[str, list[Candidate]]], budget_bytes: float,
             fixed_bytes: int = 0) -> dict[str, Candidate]:
    """One candidate per tensor, total bytes within ``budget_bytes``, least summed error.

    Every tensor starts at its cheapest candidate; then, while the budget allows, the upgrade
    with the largest error drop per extra byte (along each tensor's lower convex hull) is taken.
    :raises UnsupportedPrecisionError: the cheapest choice already exceeds the budget.
    """
    hulls: dict[str, list[Candidate]] = {}
    for name, cands in tensors:
        cands = sorted(cands, key=lambda c: (c.nbytes, c.error))
        hull: list[Candidate] = []
        for c in cands:
            if hull and c.error >= hull[-1].error:
                continue  # costs more, no better
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                # drop b if it lies above the segment a -> c (not on the lower convex hull)
                if (b.error - a.error) * (c.nbytes - a.nbytes) >= (c.error - a.error) * (b.nbytes - a.nbytes):
                    hull.pop()
                else:
                    break
            hull.append(c)
        hulls[name] = hull
    chosen = {name: 0 for name in hulls}
    total = fixed_bytes + sum(h[0].nbytes for h in hulls.values())
    if total > budget_bytes:
        raise UnsupportedPrecisionError(
            f"the smallest schemes this backend offers already take {total:,} bytes, more than the budget of "
            f"{budget_bytes:,.0f} bytes; ask for more bits per weight")
    import heapq

    def gain(name: str) -> tuple[float, str] | None:
        h, i = hulls[name], chosen[name]
        if i + 1 >= len(h):
            return None
        d_bytes = h[i + 1].nbytes - h[i].nbytes
        return (-(h[i].error - h[i + 1].error) / max(d_bytes, 1), name)

    heap = [g for g in (gain(n) for n in hulls) if g is not None]
    heapq.heapify(heap)
    while heap:
        _, name = heapq.heappop(heap)
        h, i = hulls[name], chosen[name]
        extra = h[i + 1].nbytes - h[i].nbytes
        if total + extra > budget_bytes:
            continue  # this step does not fit; cheaper steps of other tensors still may
        chosen[name] = i + 1
        total += extra
        g = gain(name)
        if g is not None:
            heapq.heappush(heap, g)
    return {name: hulls[name][i] for name, i in chosen.items()}


def relative_error(w: np.ndarray, recon: np.ndarray, importance: np.ndarray | None) -> float:
    """Σ wᵢ (x - x̂)² / Σ wᵢ x² over the tensor (wᵢ: input channel importance, 1 without it)."""
    d = (w - recon) ** 2
    x = w * w
    if importance is not None:
        d = d * importance[None, :]
        x = x * importance[None, :]
    return float(d.sum(dtype=np.float64) / max(float(x.sum(dtype=np.float64)), 1e-30))


SensitivityFn = Callable[[TensorInfo, Scheme], float]
