"""PhiMoE in llama.cpp: what its ``phimoe`` graph computes, and the weights that make it compute
the model.

llama.cpp runs ``phimoe`` through its phi3 graph (``src/models/models.h``: ``graph =
llama_model_phi3::graph``). Two things there differ from the model (transformers, the hub's
remote code): every norm is an RMSNorm plus the LayerNorm's shift (no mean subtraction), and the
router is a softmax over all experts, top-2, renormalised to sum to 1, where sparsemixer gives
each of the two experts weight 1 unless another expert's logit is within ``2 * jitter`` of it.
A GGUF holding the checkpoint's weights as they are (what ``convert_hf_to_gguf.py`` writes)
therefore runs a different function; :class:`LlamaCppPhiMoEReference` is that function, and the
tests hold such a file to it.

``phimoe_weights="faithful"`` (the default) rewrites four kinds of tensor so that llama.cpp's
graph computes the model instead, with the same tensor names, shapes and keys:

* every tensor that writes into the residual stream (the token embedding rows, ``attn_output``
  and its bias, each expert's ``w2``) is centred so its output has mean zero over the hidden
  dimension. The residual stream then always has mean zero, where an RMSNorm equals a LayerNorm
  exactly; the lm_head and the norms are untouched.
* each expert's ``w2`` is doubled and the router's logits scaled by 2^-12 (powers of two, so
  exact, and the quantizers see the same relative values): the softmax over nearly equal logits
  gives the two chosen experts about 1/2 each, doubled to sparsemixer's 1 and 1, while the
  ranking, and so the choice of experts, is unchanged.

What cannot be matched: a token whose router logits have a near-tie (sparsemixer shares a
weight between the tied experts) gets weights 1 and 1 in llama.cpp. docs/fidelity.md has the
measured effect; ``phimoe_weights="as-is"`` writes the checkpoint's values unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from phi_quant.arch.oracle import rms_norm, softmax
from phi_quant.arch.phimoe import PhiMoEReference
from phi_quant.errors import UnsupportedModelError, UnsupportedPrecisionError
from phi_quant.model.config import PhiConfig
from phi_quant.model.tensors import TensorInfo, TensorRole

__all__ = ["WEIGHTS_OPTION", "WEIGHTS_MODES", "ROUTER_SCALE", "EXPERT_SCALE", "Rewrite", "rewrite_for",
           "check_supported", "weights_mode", "LlamaCppPhiMoEReference", "FaithfulPhiMoEReference"]

#: The export option choosing how PhiMoE weights are written.
WEIGHTS_OPTION = "phimoe_weights"
WEIGHTS_MODES = ("faithful", "as-is")
#: Router logits are multiplied by this: small enough that softmax(top 2) is 1/2 each to ~1e-4,
#: large enough that float32 still orders logits 1e-3 apart (far inside sparsemixer's tie window).
ROUTER_SCALE = 2.0 ** -12
#: Each expert's w2 is multiplied by this, turning llama.cpp's renormalised 1/2 + 1/2 into 1 + 1.
EXPERT_SCALE = 2.0


@dataclass(frozen=True)
class Rewrite:
    """How one tensor's values change: centre (``rows``: each row over its columns; ``columns``:
    each column over its rows; ``vector``: a 1-D tensor over itself), then scale."""

    centre: str | None
    scale: float = 1.0

    def prepare(self, rows: np.ndarray, dtype: str, chunk_rows: int) -> Callable[[np.ndarray], np.ndarray]:
        """A function from float32 row blocks of this tensor to their rewritten values.

        ``columns`` needs each column's mean over all rows first: one pass over the
        memory-mapped rows in chunks of ``chunk_rows``, keeping a single row of sums.
        """
        from phi_quant.quant import to_float32

        mean = None
        if self.centre == "columns":
            total = np.zeros(rows.shape[1], dtype=np.float64)
            for r0 in range(0, rows.shape[0], chunk_rows):
                total += to_float32(rows[r0 : r0 + chunk_rows], dtype).sum(axis=0, dtype=np.float64)
            mean = (total / rows.shape[0]).astype(np.float32)
        scale = np.float32(self.scale)

        def apply(block: np.ndarray) -> np.ndarray:
            if self.centre in ("rows", "vector"):
                block = block - block.mean(axis=-1, keepdims=True, dtype=np.float32)
            elif mean is not None:
                block = block - mean
            return (block * scale).astype(np.float32) if self.scale != 1.0 else block.astype(np.float32)

        return apply


def weights_mode(options: object) -> str:
    """The ``phimoe_weights`` option's value, refused when it is not one of :data:`WEIGHTS_MODES`."""
    mode = str(options.get(WEIGHTS_OPTION) or "faithful").lower()  # type: ignore[attr-defined]
    if mode not in WEIGHTS_MODES:
        raise UnsupportedPrecisionError(f"{WEIGHTS_OPTION}={mode!r}: choose {' or '.join(WEIGHTS_MODES)}")
    return mode


def rewrite_for(info: TensorInfo, mode: str) -> Rewrite | None:
    """The rewrite of one PhiMoE tensor in ``mode`` (``None``: written as it is)."""
    if mode != "faithful":
        return None
    role = info.role
    if role is TensorRole.EMBED:
        return Rewrite("rows")
    if role is TensorRole.O:
        return Rewrite("columns")
    if role is TensorRole.O_BIAS:
        return Rewrite("vector")
    if role is TensorRole.DOWN and info.expert is not None:
        return Rewrite("columns", EXPERT_SCALE)
    if role is TensorRole.ROUTER:
        return Rewrite(None, ROUTER_SCALE)
    return None


def check_supported(config: PhiConfig) -> None:
    """Refuse PhiMoE configurations llama.cpp's ``phimoe`` loader cannot take (it requires every bias
    and an ``output.weight`` of its own)."""
    missing = [what for what, has in (("attention_bias", config.attention_bias), ("lm_head_bias", config.lm_head_bias))
               if not has]
    if missing:
        raise UnsupportedModelError(
            f"llama.cpp's phimoe loader requires the q/k/v/o and output biases; this PhiMoE config sets "
            f"{' and '.join(m + '=false' for m in missing)} (Phi-3.5-MoE has them): use another backend"
        )
    if config.tie_word_embeddings:
        raise UnsupportedModelError(
            "llama.cpp's phimoe loader requires its own output.weight; this PhiMoE ties it to the embedding "
            "(Phi-3.5-MoE does not): use another backend"
        )


class LlamaCppPhiMoEReference(PhiMoEReference):
    """What llama.cpp's ``phimoe`` graph computes from the weights it is given: RMSNorm plus shift,
    and softmax / top-2 / renormalised routing. With the checkpoint's own weights this is not the
    model; with the faithful rewrite it is, but for near-ties."""

    def _norm(self, x: np.ndarray, role: TensorRole, layer: int | None = None) -> np.ndarray:
        return rms_norm(x, self._weight(role, layer), self.config.rms_norm_eps) + self._bias(role, layer, True)

    def route(self, layer: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = softmax(self.router_logits(layer, h))
        picks = np.argsort(-probs, axis=-1, kind="stable")[:, :2]
        weights = np.take_along_axis(probs, picks, axis=-1)
        return picks, (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


class FaithfulPhiMoEReference(PhiMoEReference):
    """What llama.cpp computes from the faithfully rewritten weights, in terms of the checkpoint's:
    the model exactly, except that both routing weights are 1 even where sparsemixer shares one
    between near-tied experts. The gap to the oracle is the near-ties' alone."""

    def route(self, layer: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        picks, weights = super().route(layer, h)
        return picks, np.ones_like(weights)
