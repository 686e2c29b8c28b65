"""Session-scoped exports and oracle logits: each (variant, precision) is converted once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phi_quant.types import ExportOptions, NullProgress

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")


@pytest.fixture(scope="session")
def sources(tiny_sources):
    """variant -> the tiny checkpoint's ModelSource (the phi-quant pytest plugin's ``tiny_sources``)."""
    return tiny_sources


@pytest.fixture(scope="session")
def exported(sources, tmp_path_factory):
    """(variant, precision, **extra) -> (directory, ExportResult), converted once per session."""
    from phi_quant_onnx import plugin

    cache: dict[tuple, tuple[Path, object]] = {}

    def get(variant: str, precision: str, **extra):
        key = (variant, precision, tuple(sorted(extra.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{variant}-{precision}")
            res = plugin.export(
                source=sources(variant), output_dir=out,
                options=ExportOptions(precision=precision, extra=dict(extra)), progress=NullProgress(),
            )
            cache[key] = (out, res)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def oracle(sources):
    """variant -> list of (prompt, HF token ids, oracle logits float32 [T, vocab])."""
    from phi_quant.reference import ReferenceModel
    from phi_quant.testing.prompts import test_prompts

    cache: dict[str, list] = {}

    def get(variant: str):
        if variant not in cache:
            src = sources(variant)
            ref = ReferenceModel.from_source(src)
            tok = src.hf_tokenizer()
            rows = []
            for p in test_prompts(variant):
                ids = tok.encode(p, add_special_tokens=False).ids
                rows.append((p, ids, np.asarray(ref.logits(ids), dtype=np.float32)))
            cache[variant] = (ref, rows)
        return cache[variant]

    return get
