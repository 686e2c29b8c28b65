"""transformers as the oracle's oracle: the class of each architecture, and logits the way the
model defines them.

Test-only (torch and transformers are imported on use). :func:`hf_logits` runs a transformers
model in float32; for PhiMoE it passes the sequence length to the LongRoPE initialisation, as
transformers 4.x and the hub's remote code do: transformers 5's ``PhimoeRotaryEmbedding`` calls
it without the length and so uses the short factors on every prompt (picking only the mscale by
length). :func:`phimoe_without_long_factors` is what transformers 5 computes instead, for the
test that pins that difference.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np

from ..arch.config import PhiConfig

__all__ = ["hf_class", "hf_logits", "phimoe_length_aware_rope", "phimoe_without_long_factors"]


def hf_class(config: PhiConfig) -> Any:
    """The transformers class computing ``config``'s architecture."""
    import transformers

    return {"phi3": transformers.Phi3ForCausalLM, "phimoe": transformers.PhimoeForCausalLM}[config.arch_name]


@contextlib.contextmanager
def phimoe_length_aware_rope() -> Iterator[None]:
    """Within the block, transformers' PhiMoE rotary embedding picks LongRoPE factors by length."""
    import torch
    from transformers.models.phimoe import modeling_phimoe as mp

    original = mp.PhimoeRotaryEmbedding.forward

    def forward(self: Any, x: Any, position_ids: Any = None) -> Any:
        seq_len = int(torch.max(position_ids)) + 1
        init = self.rope_init_fn
        self.rope_init_fn = lambda config, *args, **kwargs: init(config, x.device, seq_len=seq_len)
        try:
            return original(self, x, position_ids)
        finally:
            self.rope_init_fn = init

    mp.PhimoeRotaryEmbedding.forward = forward
    try:
        yield
    finally:
        mp.PhimoeRotaryEmbedding.forward = original


def hf_logits(model: Any, ids: Sequence[int], *, length_aware: bool = True) -> np.ndarray:
    """float32 logits ``[len(ids), vocab]`` of a transformers model (PhiMoE: length-aware LongRoPE
    unless ``length_aware=False``)."""
    import torch

    phimoe = type(model).__name__ == "PhimoeForCausalLM" and length_aware
    with torch.no_grad(), (phimoe_length_aware_rope() if phimoe else contextlib.nullcontext()):
        return model(torch.tensor([list(ids)])).logits[0].float().numpy()


def phimoe_without_long_factors(config: PhiConfig) -> PhiConfig:
    """``config`` with the long LongRoPE factors replaced by the short ones (mscales kept): the
    oracle of what transformers 5's PhimoeForCausalLM computes on long prompts."""
    import dataclasses

    return dataclasses.replace(config, rope=dataclasses.replace(config.rope, long_factor=config.rope.short_factor))
