"""Shared, session-scoped exports and oracle logits: each (variant, scheme) is converted once."""

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
    """(variant, precision, scheme) -> (directory, ExportResult), converted once per session."""
    from phi_quant_llamacpp import plugin

    cache: dict[tuple, tuple[Path, object]] = {}

    def get(variant: str, precision: str, scheme: str):
        key = (variant, scheme)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{variant}-{scheme}")
            res = plugin.export(
                source=sources(variant), output_dir=out,
                options=ExportOptions(precision=precision, scheme=scheme), progress=NullProgress(),
            )
            cache[key] = (out, res)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def prompt_ids(sources):
    """variant -> list of (prompt, HF token ids) for the shared test prompts."""
    from phi_quant.testing.prompts import test_prompts

    cache: dict[str, list] = {}

    def get(variant: str):
        if variant not in cache:
            tok = sources(variant).hf_tokenizer()
            cache[variant] = [(p, tok.encode(p, add_special_tokens=False).ids) for p in test_prompts(variant)]
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def oracle_logits(sources, prompt_ids):
    """variant -> list of float32 [T, vocab] oracle logits, one per test prompt."""
    from phi_quant.reference import ReferenceModel

    cache: dict[str, list[np.ndarray]] = {}

    def get(variant: str):
        if variant not in cache:
            ref = ReferenceModel.from_source(sources(variant))
            cache[variant] = [ref.logits(ids) for _, ids in prompt_ids(variant)]
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def measured(exported, prompt_ids, oracle_logits):
    """(variant, precision, scheme) -> (FidelityReport over all prompts, n_ctx per prompt).

    The model is loaded with the default "auto" context policy (see runtime.py): prompts up to
    the original context run with short LongRoPE factors, longer ones with long factors.
    """
    from phi_quant.fidelity import compare_logits
    from phi_quant_llamacpp import plugin

    cache: dict[tuple, tuple] = {}

    def get(variant: str, precision: str, scheme: str):
        key = (variant, scheme)
        if key not in cache:
            out, _ = exported(variant, precision, scheme)
            model = plugin.load_model(path=out, options={})
            try:
                got, ctx = [], []
                for (_, ids) in prompt_ids(variant):
                    got.append(model.logits(ids))
                    ctx.append((len(ids), model.context_for(len(ids)), model.uses_long_factors(len(ids))))
            finally:
                model.close()
            ref = np.concatenate(oracle_logits(variant))
            cache[key] = (compare_logits(ref, np.concatenate(got)), ctx)
        return cache[key]

    return get
