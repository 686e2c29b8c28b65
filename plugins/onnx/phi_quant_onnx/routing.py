"""PhiMoE's sparsemixer routing, as ONNX nodes in front of the MoE / QMoE node.

onnxruntime's MoE kernels route by themselves from ``router_probs``: a softmax over all experts,
then the top k, optionally renormalised (``normalize_routing_weights``), or with
``use_sparse_mixer=1`` a sparse mixer whose tie window is fixed inside the kernel. PhiMoE's
sparsemixer (transformers ``sparsemixer``, eval mode; :func:`phi_quant.arch.oracle.sparsemixer`)
picks the argmax and gives it its softmax probability among the experts within ``2 * jitter``
of it (relative), then the same for the best of the rest: weights that are 1 and 1 unless
logits nearly tie, and that need not sum to 1.

So the graph computes sparsemixer itself, exactly as the oracle does (the same argmax, masks and
softmaxes, in float32), and hands the kernel logits it cannot misread: ``log w`` at the two
chosen experts and ``-inf`` elsewhere. The kernel's softmax then gives ``w1 / (w1 + w2)`` and
``w2 / (w1 + w2)`` to exactly those two experts, and one ``Mul`` by ``w1 + w2`` after the MoE
node restores sparsemixer's weights. The kernel's own ranking, tie-breaking and tie window
never matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from .graph import GraphBuilder

__all__ = ["Routing", "sparsemixer_routing"]


@dataclass(frozen=True)
class Routing:
    """What the MoE node reads: its ``router_probs`` input, attributes, and the output scale."""

    router_probs: str
    output_scale: str  # [tokens, 1]: multiply the MoE output by it ("" for none)
    use_sparse_mixer: int = 0


def sparsemixer_routing(g: GraphBuilder, logits: str, jitter: float, base: str, experts: int) -> Routing:
    """Nodes turning router ``logits`` [tokens, experts] (float32) into the MoE node's routing inputs."""
    neg_inf = g.const(-np.inf, np.float32)
    window = g.const(np.float32(2.0 * jitter), np.float32)
    index = g.const(np.arange(experts, dtype=np.int64).reshape(1, experts))
    magnitude = g.node1("Abs", [logits], f"{base}/Abs")
    masked = logits
    picks, weights = [], []
    for n in (1, 2):
        b = f"{base}/pick{n}"
        best = g.node1("ArgMax", [masked], f"{b}/ArgMax", axis=-1, keepdims=1, select_last_index=0)
        top = g.node1("ReduceMax", [masked, g.const([-1])], f"{b}/ReduceMax", keepdims=1)
        factor = g.node1("Max", [magnitude, top], f"{b}/Max")
        gap = g.node1("Div", [g.node1("Sub", [top, logits], f"{b}/Sub"), factor], f"{b}/Div")
        far = g.node1("Greater", [gap, window], f"{b}/Greater")
        gates = g.node1("Softmax", [g.node1("Where", [far, neg_inf, masked], f"{b}/Where")], f"{b}/Softmax", axis=-1)
        weights.append(g.node1("GatherElements", [gates, best], f"{b}/GatherElements", axis=-1))
        chosen = g.node1("Equal", [index, best], f"{b}/Equal")
        picks.append(chosen)
        if n == 1:
            masked = g.node1("Where", [chosen, neg_inf, logits], f"{b}/Mask")
    w1, w2 = weights
    total = g.node1("Add", [w1, w2], f"{base}/Sum")
    probs = g.node1("Where", [picks[1], g.node1("Log", [w2], f"{base}/Log2"), neg_inf], f"{base}/Where2")
    probs = g.node1("Where", [picks[0], g.node1("Log", [w1], f"{base}/Log1"), probs], f"{base}/Where1")
    return Routing(router_probs=probs, output_scale=total)
