"""What every architecture module provides: the contract between one model layout and the core.

An architecture module (``phi_quant/arch/<name>.py``) defines one :class:`Architecture`
subclass and one instance of it, ``ARCHITECTURE``, listed in :mod:`phi_quant.arch.registry`.
The instance owns everything that differs between layouts: the config parsing, the Hugging
Face tensor names of each role, the stream order with each tensor's expected shape, the row
splits of fused tensors, the parameter count and memory estimate, and the numpy oracle. The
core (reader, sizing, inspect, the oracle's entry point) only ever asks these questions.

Sizes are derived from :meth:`Architecture.stream_plan`, so a module that lists its tensors
correctly gets exact parameter counts and weight sizes for free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .config import PhiConfig
from .roles import TensorRole

if TYPE_CHECKING:  # pragma: no cover
    from .oracle import ReferenceModel

__all__ = ["Architecture", "TensorSpec", "Split", "ScaleFold", "Observe"]

#: ``observe(role, activations, expert=None)``: sees the float32 input [tokens, K] of the matmul of
#: ``role`` (and ``expert`` in a mixture-of-experts layer) during a calibration forward pass.
Observe = Callable[..., None]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor the architecture expects in a checkpoint: what it is, its name and shape."""

    role: TensorRole
    layer: int | None
    name: str  # Hugging Face tensor name
    shape: tuple[int, ...]
    expert: int | None = None  # expert index inside a mixture-of-experts layer

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Split:
    """Rows ``[start, stop)`` of a fused tensor that form the tensor of role ``role``."""

    role: TensorRole
    start: int
    stop: int


@dataclass(frozen=True, eq=False)
class ScaleFold:
    """A per-channel scale ``s`` that moves between two tensors of a layer without changing its function.

    Dividing the ``source`` tensor (a norm's gains when ``rows`` is None, else rows ``[start, stop)``
    of a matrix whose output feeds the consumers linearly) by ``s`` and multiplying the input
    columns of every consumer matmul by ``s[index]`` leaves the layer's outputs unchanged in exact
    arithmetic. ``index`` maps each consumer column to its entry of ``s`` (None: the identity); under
    grouped-query attention one v row feeds the o_proj columns of every query head of its group.
    Activation-aware scaling (AWQ) chooses ``s`` from the consumers' input statistics.
    """

    name: str  # e.g. "attn_in", "v_o", "mlp_in", "up_down"
    layer: int
    source: TensorRole
    rows: tuple[int, int] | None
    consumers: tuple[tuple[TensorRole, int | None], ...]  # (role, expert) of each matmul whose columns scale
    size: int
    index: np.ndarray | None = None

    def consumer_scale(self, s: np.ndarray) -> np.ndarray:
        """The column scale of a consumer for the fold's scale ``s``."""
        return s if self.index is None else s[self.index]


class Architecture:
    """Base of the architecture modules' objects. Subclasses set the class attributes and
    implement :meth:`parse_config`, :meth:`hf_name`, :meth:`stream_plan` and ``reference_class``."""

    #: Short name used everywhere phi-quant names an architecture (``BackendInfo.architectures``,
    #: ``PhiConfig.arch_name``): the Hugging Face ``model_type``, e.g. ``"phi3"``.
    name: str = ""
    #: Hugging Face class names (``config.json`` ``architectures[0]``) this module reads.
    hf_architectures: tuple[str, ...] = ()
    #: ``model_type`` values accepted when ``architectures`` is absent.
    model_types: tuple[str, ...] = ()
    #: The published models it covers, for messages ("Phi-3/3.5-mini, Phi-4, ...").
    models: str = ""
    #: The oracle: a :class:`phi_quant.arch.oracle.ReferenceModel` subclass.
    reference_class: type["ReferenceModel"]

    def __repr__(self) -> str:
        return f"<Architecture {self.name} ({', '.join(self.hf_architectures)})>"

    # -- config ------------------------------------------------------------------------------------
    def parse_config(self, raw: dict[str, Any], *, tokenizer_size: int | None = None,
                     file: str = "config.json") -> PhiConfig:
        """Normalise a raw ``config.json`` of this architecture, refusing what cannot be converted.

        Check every field read first, by type and range, with
        :func:`phi_quant.arch.config_fields.check_config` and the module's own field table;
        ``file`` is how refusals name the config.
        """
        raise NotImplementedError

    def quirks(self, config: PhiConfig) -> list[str]:
        """What is unusual about this model, one short phrase each (``inspect``).

        The attention and rotary quirks every Phi decoder may have; a module adds its own.
        """
        c, out = config, []
        if c.is_gqa:
            out.append(f"grouped-query attention ({c.num_heads} query / {c.num_kv_heads} kv heads)")
        if c.rope.rotary_dim != c.head_dim:
            out.append(
                f"partial rotary: {c.rope.rotary_dim} of {c.head_dim} head dims rotate "
                f"(factor {c.partial_rotary_factor:g})"
            )
        if c.rope.is_longrope:
            scale = (f"attention factor {c.rope.attention_factor:.4f}" if c.rope.short_mscale is None else
                     f"mscale {c.rope.mscale(False):.4f} short / {c.rope.mscale(True):.4f} long")
            out.append(
                f"LongRoPE: short/long factors ({len(c.rope.short_factor or ())} each), "
                f"original context {c.rope.original_max_position}, max {c.max_position_embeddings}, {scale}"
            )
        if c.tie_word_embeddings:
            out.append("tied embeddings: lm_head reuses embed_tokens")
        if c.sliding_window is not None:
            out.append(f"sliding window {c.sliding_window}")
        if c.vocab_size and c.raw.get("_tokenizer_size") and c.raw["_tokenizer_size"] < c.vocab_size:
            out.append(f"vocabulary padded: {c.raw['_tokenizer_size']} tokens, {c.vocab_size} rows")
        out.append(f"rope theta {c.rope.theta:g}")
        return out

    # -- tensors -----------------------------------------------------------------------------------
    def hf_name(self, role: TensorRole, layer: int | None = None, expert: int | None = None) -> str:
        """The Hugging Face tensor name of a role (split roles get their unfused names)."""
        raise NotImplementedError

    def stream_plan(self, config: PhiConfig) -> list[TensorSpec]:
        """Every tensor of a checkpoint in the order the reader streams it, with its expected shape.

        This order is the one backends rely on (``ModelSource.tensors()``); each module's
        docstring states it.
        """
        raise NotImplementedError

    def splits(self, config: PhiConfig) -> Mapping[TensorRole, tuple[Split, ...]]:
        """Fused roles and the row slices ``tensors(split=True)`` yields instead (none by default)."""
        return {}

    def check_layout(self, names: Iterable[str]) -> None:
        """Refuse, before any shape check, a checkpoint whose tensor names show another layout."""

    # -- sizes -------------------------------------------------------------------------------------
    def parameter_count(self, config: PhiConfig) -> int:
        """Exact number of parameters the checkpoint stores."""
        return sum(t.numel for t in self.stream_plan(config))

    def active_parameter_count(self, config: PhiConfig) -> int:
        """Parameters one token passes through (a mixture of experts uses only some experts)."""
        return self.parameter_count(config)

    def weight_bytes(self, config: PhiConfig, bits_per_weight: float, *, active: bool = False) -> int:
        """Bytes of all weights with matmul weights at ``bits_per_weight`` and 1-D tensors in fp32.

        ``active``: only what one token reads (a mixture of experts skips the experts it is not
        routed to; memory must still hold them all).
        """
        matmul = vectors = 0
        for t in self.stream_plan(config):
            if active and t.expert is not None and t.expert >= config.experts_per_token:
                continue
            if t.role.is_matmul:
                matmul += t.numel
            else:
                vectors += t.numel
        return int(matmul * bits_per_weight / 8 + vectors * 4)

    def kv_cache_bytes(self, config: PhiConfig, context_length: int, bytes_per_value: int = 2) -> int:
        """KV cache of one sequence of ``context_length`` tokens."""
        return 2 * config.num_layers * config.num_kv_heads * config.head_dim * context_length * bytes_per_value

    # -- the oracle --------------------------------------------------------------------------------
    def reference(self, config: PhiConfig, weights: Mapping[str, Any]) -> "ReferenceModel":
        """The float32 numpy forward pass over ``weights`` (Hugging Face names -> arrays)."""
        return self.reference_class(config, weights)

    # -- calibration ---------------------------------------------------------------------------------
    def layer_roles(self, config: PhiConfig, layer: int) -> list[TensorSpec]:
        """The tensors of decoder layer ``layer``, in stream order."""
        return [t for t in self.stream_plan(config) if t.layer == layer]

    @property
    def calibrates(self) -> bool:
        """Whether this architecture implements :meth:`calibration_layer` (calibrated recipes need it)."""
        return type(self).calibration_layer is not Architecture.calibration_layer

    def calibration_layer(self, config: PhiConfig, layer: int, weight: Callable[..., np.ndarray], x: np.ndarray,
                          cos: np.ndarray, sin: np.ndarray, observe: Observe) -> np.ndarray:
        """Run decoder layer ``layer`` on one sequence's residual stream ``x`` [T, hidden] and return it.

        ``weight(role, expert=None)`` gives the layer's float32 tensors (read one layer at a time);
        ``observe`` must see the input of every matmul of the layer (a mixture-of-experts layer
        calls it once per expert with the tokens routed to it). Calibration is refused for an
        architecture that does not implement this.
        """
        raise NotImplementedError

    def calibration_final(self, config: PhiConfig, weight: Callable[..., np.ndarray], x: np.ndarray,
                          observe: Observe) -> None:
        """The final norm on ``x``, observed as the input of the output projection (LM_HEAD, also
        for a tied embedding)."""
        from .oracle import rms_norm

        observe(TensorRole.LM_HEAD, rms_norm(x, weight(TensorRole.FINAL_NORM), config.rms_norm_eps))

    def scale_folds(self, config: PhiConfig, layer: int) -> list[ScaleFold]:
        """The per-channel scales activation-aware scaling may fold in layer ``layer`` (none by default)."""
        return []

