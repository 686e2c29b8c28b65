"""Shared fixtures: tiny checkpoints exported once per session, keyed by variant and options, and
the oracle fed the weights exactly as an export stores them."""

from __future__ import annotations

from pathlib import Path

import pytest

from phi_quant.model.source import open_model
from phi_quant.testing.factory import cached_checkpoint
from phi_quant.types import ExportOptions, NullProgress


@pytest.fixture(scope="session")
def export_tiny(tmp_path_factory):
    """export_tiny(variant, precision, **options) -> (output dir, ExportResult), cached."""
    cache: dict = {}

    def make(variant: str, precision: str, **kw):
        from phi_quant_openvino.export import export_model

        extra = kw.pop("extra", {})
        key = (variant, precision, tuple(sorted(kw.items())), tuple(sorted(extra.items())))
        if key not in cache:
            out = Path(tmp_path_factory.mktemp(f"ov-{variant}-{precision}"))
            with open_model(cached_checkpoint(variant)) as src:
                result = export_model(src, out, ExportOptions(precision=precision, extra=extra, **kw), NullProgress())
            cache[key] = (out, result)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def stored_oracle():
    """stored_oracle(variant, result) -> the numpy oracle on the weights as the IR computes them.

    Comparing a compressed model with an oracle that uses the *dequantized* weights separates
    whether the graph is right (~1e-4) from what quantization costs. Cached per scheme plan.
    """
    cache: dict = {}

    def make(variant: str, result):
        schemes = result.details["per_tensor"]
        key = (variant, tuple(sorted(schemes.items())))
        if key not in cache:
            cache[key] = _build_oracle(variant, schemes)
        return cache[key]

    return make


def _build_oracle(variant: str, schemes: dict):
    from phi_quant.reference import ReferenceModel
    from phi_quant_openvino.packing import dequantize, pack
    from phi_quant_openvino.schemes import TensorScheme

    weights = {}
    with open_model(cached_checkpoint(variant)) as src:
        for t in src.tensors():
            if not t.role.is_matmul:  # norms, shifts and biases are stored as f32
                weights[t.name] = t.to_float32()
                continue
            label = schemes[t.name]
            mode, _, rest = label.rpartition("_")
            group = None if rest in ("cw", "fp32", "fp16") else int(rest[1:])
            scheme = TensorScheme(label if label in ("fp32", "fp16") else mode, group)
            weights[t.name] = dequantize(pack(t, scheme), scheme, t.shape)
        return ReferenceModel(src.config, weights)
