"""The oracle: a float32 numpy forward pass of the checkpoint's architecture.

Every backend's output is judged against these logits, and tests/test_oracle.py holds the
oracle to transformers (float32, eager attention) within 1e-4 on every tiny variant.
``ReferenceModel(config, weights)`` builds the oracle of ``config.arch``: each architecture
module holds its own forward pass (:class:`phi_quant.arch.phi3.Phi3Reference` for
Phi3ForCausalLM), on the shared building blocks of :mod:`phi_quant.arch.oracle`.
"""

from __future__ import annotations

from .arch.oracle import ReferenceModel, rope_tables

__all__ = ["ReferenceModel", "rope_tables"]
