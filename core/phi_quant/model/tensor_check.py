"""The config against the tensors actually present, before any work is planned.

``num_hidden_layers: 1000000000`` used to make the reader plan a billion layers (3.7 GiB after
two minutes); a checkpoint with one layer more than its config converted without the extra
layer. Both are caught here from tensor names alone: the decoder layers present
(``model.layers.N.*``) must be exactly ``0 .. num_layers - 1``, and after the stream is planned,
every tensor must be one the architecture reads or a known buffer (rotary tables that
some exports save and no computation needs).
"""

from __future__ import annotations

import re
from typing import Iterable

from ..errors import CheckpointError

__all__ = ["KNOWN_BUFFERS", "layers_present", "check_layer_count", "check_no_unexpected"]

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")

#: Tensors a checkpoint may carry that no conversion reads: rotary-embedding buffers
#: (``inv_freq``, cached cos/sin tables) saved by some exporters.
KNOWN_BUFFERS = (
    re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.\w+$"),
    re.compile(r"^model\.rotary_emb\.\w+$"),
)


def layers_present(names: Iterable[str]) -> set[int]:
    """The decoder-layer indexes that have at least one tensor."""
    return {int(m.group(1)) for n in names if (m := _LAYER.match(n))}


def _span(layers: set[int]) -> str:
    if not layers:
        return "no decoder layer"
    return f"{len(layers)} layer{'s' if len(layers) != 1 else ''} (indexes {min(layers)} to {max(layers)})"


def check_layer_count(names: Iterable[str], num_layers: int, config_file: str = "config.json") -> None:
    """The checkpoint must hold tensors for exactly layers ``0 .. num_layers - 1``."""
    layers = layers_present(names)
    expected = set(range(num_layers))
    if layers == expected:
        return
    extra = sorted(layers - expected)
    if extra:
        raise CheckpointError(
            f"the checkpoint holds tensors for {_span(layers)} but {config_file} says num_hidden_layers={num_layers} "
            f"(layer {extra[0]} is beyond it); refusing to drop layers silently: use the config.json of these weights"
        )
    missing = min(expected - layers)
    raise CheckpointError(
        f"{config_file} says num_hidden_layers={num_layers} but the checkpoint has no tensors for layer {missing} "
        f"(it holds {_span(layers)}); config.json and the weights do not belong together, or shards are missing: "
        "re-download the checkpoint"
    )


def check_no_unexpected(names: Iterable[str], planned: Iterable[str], architecture: str) -> None:
    """Every tensor is planned or a known buffer; others would be silently dropped."""
    planned = set(planned)
    unexpected = sorted(n for n in names if n not in planned and not any(b.match(n) for b in KNOWN_BUFFERS))
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise CheckpointError(
            f"the checkpoint holds tensor {unexpected[0]}{more}, which {architecture} does not use; converting would "
            "drop it silently. The checkpoint is not a plain Phi3ForCausalLM (adapters, extra heads?) or its "
            "config.json does not match the weights"
        )
