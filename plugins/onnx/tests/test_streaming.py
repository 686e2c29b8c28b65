"""Conversion streams: no torch on the conversion path, and bounded memory on a >= 1 GB checkpoint."""

from __future__ import annotations

import json
import textwrap

import pytest

from phi_quant.testing.rss import run_with_peak_rss

RSS_LIMIT = 600 * 2**20

CONVERT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from phi_quant.model.source import open_model
    from phi_quant.types import ExportOptions, NullProgress
    from phi_quant_onnx import plugin
    with open_model({src!r}) as src:
        for precision in {precisions!r}:
            out = Path({out!r}) / precision
            out.mkdir(parents=True)
            plugin.export(source=src, output_dir=out, options=ExportOptions(precision=precision), progress=NullProgress())
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
    print("MODULES", json.dumps(heavy))
    """
)


def test_conversion_imports_no_torch(tmp_path):
    from phi_quant.testing.factory import cached_checkpoint

    code = CONVERT.format(src=str(cached_checkpoint("phi4-mini")), precisions=["fp16", "int4"], out=str(tmp_path))
    res = run_with_peak_rss(code, timeout=300)
    assert res.returncode == 0, res.output
    heavy = json.loads(res.output.rsplit("MODULES", 1)[1].strip().splitlines()[0])
    assert heavy == [], f"conversion imported {heavy[:5]}"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16"])  # int4 is covered by the conformance kit
def test_peak_rss_converting_a_large_checkpoint(precision, large_checkpoint, tmp_path):
    code = CONVERT.format(src=str(large_checkpoint), precisions=[precision], out=str(tmp_path))
    res = run_with_peak_rss(code, timeout=900)
    assert res.returncode == 0, res.output
    size = sum(f.stat().st_size for f in large_checkpoint.glob("*.safetensors"))
    assert size >= 1_000_000_000
    assert res.peak_rss < RSS_LIMIT, f"peak RSS {res.peak_rss / 2**20:.0f} MiB converting {size / 2**30:.2f} GiB"


@pytest.fixture(scope="module")
def large_checkpoint(tmp_path_factory):
    from phi_quant.testing.factory import make_large_checkpoint

    return make_large_checkpoint(tmp_path_factory.mktemp("large"))


@pytest.mark.slow
def test_peak_rss_converting_large_moe_checkpoints_fp16(tmp_path):
    """Float experts (MoE's interleaved fc1 written row by row) stream too: the 8- and 16-expert
    checkpoints (same tensor shapes) convert within the dense bound and without growing.
    int4 (QMoE) is covered by the conformance kit's test_streaming_moe."""
    from phi_quant.testing.kit_streaming import MOE_EXPERTS, large_moe_checkpoint, measure_conversion_rss
    from phi_quant.types import ExportOptions

    peaks, sizes = [], []
    for n in MOE_EXPERTS:
        peak, size, error = measure_conversion_rss("onnx", ExportOptions(precision="fp16"), tmp_path / f"moe-{n}",
                                                   checkpoint=large_moe_checkpoint(n))
        assert not error, error
        peaks.append(peak)
        sizes.append(size)
    assert sizes[1] * 2**20 >= 1_000_000_000
    assert peaks[1] * 2**20 < RSS_LIMIT, f"peak RSS {peaks[1]:.0f} MiB converting {sizes[1]:.0f} MiB"
    assert peaks[1] - peaks[0] <= 32, f"peak RSS grew from {peaks[0]:.0f} to {peaks[1]:.0f} MiB with more experts"
