"""Shared fixtures: tiny checkpoints exported once per session, keyed by variant and options."""

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
