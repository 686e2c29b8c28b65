"""Shared, session-scoped exports and oracle logits: each (variant, options) is converted once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phi_quant.types import ExportOptions, NullProgress


@pytest.fixture(scope="session")
def sources(tiny_sources):
    """variant -> the tiny checkpoint's ModelSource (the phi-quant pytest plugin's ``tiny_sources``)."""
    return tiny_sources


@pytest.fixture(scope="session")
def exported(sources, tmp_path_factory):
    """(variant, precision, **options) -> (directory, ExportResult), converted once per session."""
    from phi_quant_mlx import plugin

    cache: dict[tuple, tuple[Path, object]] = {}

    def get(variant: str, precision: str, *, group_size=None, context_length=None, **extra):
        key = (variant, precision, group_size, context_length, tuple(sorted(extra.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{variant}-{precision}")
            res = plugin.export(
                source=sources(variant), output_dir=out,
                options=ExportOptions(precision=precision, group_size=group_size, context_length=context_length,
                                      extra=dict(extra)),
                progress=NullProgress(),
            )
            cache[key] = (out, res)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def prompt_ids(sources):
    """variant -> list of HF token ids, one per shared test prompt."""
    from phi_quant.testing.prompts import test_prompts

    cache: dict[str, list] = {}

    def get(variant: str):
        if variant not in cache:
            tok = sources(variant).hf_tokenizer()
            cache[variant] = [tok.encode(p, add_special_tokens=False).ids for p in test_prompts(variant)]
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def reference(sources):
    from phi_quant.reference import ReferenceModel

    cache: dict[str, object] = {}

    def get(variant: str):
        if variant not in cache:
            cache[variant] = ReferenceModel.from_source(sources(variant))
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def oracle_logits(reference, prompt_ids):
    """variant -> list of float32 [T, vocab] oracle logits, one per test prompt."""
    cache: dict[str, list[np.ndarray]] = {}

    def get(variant: str):
        if variant not in cache:
            ref = reference(variant)
            cache[variant] = [np.asarray(ref.logits(ids), dtype=np.float32) for ids in prompt_ids(variant)]
        return cache[variant]

    return get

