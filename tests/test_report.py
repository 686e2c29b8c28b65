"""compare's report: JSON, Markdown table and picture come from the same cells and agree."""

from __future__ import annotations

import json
import re

from phi_quant.compare import CellSpec, plan_cells
from phi_quant.report import markdown_table, write_report

CELLS = [
    {"backend": "llamacpp", "precision": "fp16", "scheme": "F16", "status": "ok", "size_bytes": 3 * 1024**2,
     "kl_mean": 1.2e-6, "top1_agreement": 1.0, "perplexity": 41.5, "prompt_tokens_per_s": 900.0,
     "gen_tokens_per_s": 310.0, "load_seconds": 0.05, "convert_seconds": 0.4, "peak_rss_bytes": 150 * 1024**2},
    {"backend": "onnx", "precision": "int4", "scheme": "MatMulNBits-4-b32", "status": "ok", "size_bytes": 1024**2,
     "kl_mean": 0.031, "top1_agreement": 0.9, "perplexity": 44.0, "prompt_tokens_per_s": 700.0,
     "gen_tokens_per_s": 400.0, "load_seconds": 0.2, "convert_seconds": 0.9, "peak_rss_bytes": 220 * 1024**2},
    {"backend": "mlx", "precision": "int8", "status": "failed", "error": "quantize: boom | bad"},
]


def test_markdown_table_matches_cells():
    table = markdown_table(CELLS).splitlines()
    assert len(table) == 2 + len(CELLS)
    row = [c.strip() for c in table[2].strip("|").split("|")]
    assert row[:4] == ["llamacpp", "fp16", "F16", "ok"]
    assert row[4] == "3.00" and row[5] == "1.2e-06" and row[6] == "100.0%"
    failed = table[4]
    assert "failed: quantize: boom / bad" in failed and failed.count("–") >= 5


def test_write_report_writes_all_four_files_with_the_same_data(tmp_path):
    written = write_report(tmp_path, CELLS, {"model": "tiny:phi4-mini"})
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["cells"] == CELLS
    md = (tmp_path / "report.md").read_text()
    assert markdown_table(CELLS) in md
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and page.count("<tr>") == len(CELLS) + 1
    embedded = re.search(r"id='report-data'>(.*)</script>", page, re.S).group(1)
    assert json.loads(embedded.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))["cells"] == CELLS
    assert set(written) == {"json", "md", "png", "html"}


def test_plan_cells_keeps_only_offered_precisions():
    cells = plan_cells({"a": ["fp32", "int4"], "b": ["fp16", "int8", "int4"]}, precisions=["fp16", "int4"])
    assert cells == [CellSpec("a", "int4"), CellSpec("b", "fp16"), CellSpec("b", "int4")]
    assert plan_cells({"a": ["fp32"]}, backends=["zzz"]) == []
