"""Render a ``compare`` run: report.json, report.md (a table), report.png and report.html.

The report is built from one list of cell dicts, so the JSON, the Markdown table, the picture
and the HTML page cannot disagree. matplotlib is optional (``pip install phi-quant[plot]``):
without it the PNG/HTML plot is skipped with a note, the table and JSON are still written.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

__all__ = ["COLUMNS", "write_report", "markdown_table", "format_cell", "text_record"]

#: (key, header, format) of the report table, in order.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("backend", "backend", "s"),
    ("precision", "precision", "s"),
    ("scheme", "scheme", "s"),
    ("status", "status", "s"),
    ("size_bytes", "size (MiB)", "mib"),
    ("kl_mean", "KL mean", "g4"),
    ("top1_agreement", "top-1", "pct"),
    ("text_kl_mean", "KL text", "g4"),
    ("text_top1_agreement", "top-1 text", "pct"),
    ("perplexity", "ppl", "f3"),
    ("ppl_delta", "Δppl", "+f3"),
    ("answers_agree", "answers", "s"),
    ("prompt_tokens_per_s", "prompt tok/s", "f1"),
    ("gen_tokens_per_s", "gen tok/s", "f1"),
    ("load_seconds", "load (s)", "f3"),
    ("convert_seconds", "convert (s)", "f2"),
    ("peak_rss_bytes", "run RSS (MiB)", "mib"),
)

_MARKERS = {"llamacpp": "o", "onnx": "s", "openvino": "^", "mlx": "D", "reference": "X"}
_COLORS = {"fp32": "#1f77b4", "fp16": "#2ca02c", "bf16": "#17becf", "int8": "#ff7f0e", "int4": "#d62728"}


def format_cell(value: Any, fmt: str) -> str:
    """One table cell as text; missing values are an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if fmt == "mib":
        return f"{value / 1024**2:.2f}"
    if fmt == "g4":
        return f"{value:.4g}"
    if fmt == "pct":
        return f"{100 * value:.1f}%"
    if fmt.startswith("+f"):
        return f"{value:+.{int(fmt[2:])}f}"
    if fmt.startswith("f"):
        return f"{value:.{int(fmt[1:])}f}"
    return str(value)


def markdown_table(cells: Sequence[dict[str, Any]]) -> str:
    """The report table in Markdown; failed cells show their error in the status column."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = []
    for c in cells:
        vals = []
        for key, _, fmt in COLUMNS:
            v = c.get(key)
            if key == "status" and c.get("status") != "ok":
                v = f"failed: {c.get('error', '')}".replace("|", "/").replace("\n", " ")[:120]
            vals.append(format_cell(v, fmt))
        rows.append("| " + " | ".join(vals) + " |")
    return "\n".join([head, rule, *rows])


def text_record(cells: Sequence[dict[str, Any]]) -> str:
    """One line naming the text perplexity and text KL were measured on (files, sha256, windows), or ""."""
    seen = {json.dumps(c["text"], sort_keys=True): c["text"] for c in cells if isinstance(c.get("text"), dict)}
    lines = []
    for t in seen.values():
        files = ", ".join(f["path"] for f in t.get("files", [])) or t.get("name", "the text")
        lines.append(f"{files} (text sha256 {t.get('sha256', '?')}), first {t.get('tokens')} tokens "
                     f"in windows of {t.get('window')}")
    return "; ".join(lines)


def _plot(cells: Sequence[dict[str, Any]], title: str):
    """Two panels: size vs KL and tokens/s vs size, one marker per backend × precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in cells if c.get("status") == "ok" and c.get("size_bytes")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    kl_floor = 1e-7
    # KL on the text (hundreds of positions of prose) where every cell has it, else on the test prompts.
    kl_key = "text_kl_mean" if ok and all(c.get("text_kl_mean") is not None for c in ok) else "kl_mean"
    for i, c in enumerate(ok):
        b, p = c["backend"], c["precision"]
        offset = (5, 4 + 7 * (i % 3 - 1))  # stagger labels so neighbours in a cluster stay readable
        size = c["size_bytes"] / 1024**2
        kw = dict(marker=_MARKERS.get(b, "P"), color=_COLORS.get(p, "#7f7f7f"), s=70, edgecolors="black", linewidths=0.5)
        label = f"{b} {c.get('label') or p}"
        if c.get(kl_key) is not None:
            ax1.scatter(size, max(c[kl_key], kl_floor), **kw)
            ax1.annotate(label, (size, max(c[kl_key], kl_floor)), textcoords="offset points", xytext=offset, fontsize=7)
        if c.get("gen_tokens_per_s"):
            ax2.scatter(size, c["gen_tokens_per_s"], **kw)
            ax2.annotate(label, (size, c["gen_tokens_per_s"]), textcoords="offset points", xytext=offset, fontsize=7)
    ax1.set_xlabel("model size on disk (MiB)")
    where = "on the text" if kl_key == "text_kl_mean" else "on the test prompts"
    ax1.set_ylabel(f"mean KL(reference ‖ backend) {where}, log scale (floor {kl_floor:g})")
    ax1.set_yscale("log")
    ax1.set_title("accuracy vs size (lower-left is better)")
    ax2.set_xlabel("model size on disk (MiB)")
    ax2.set_ylabel("generation tokens/s, log scale")
    ax2.set_yscale("log")
    ax2.set_title("speed vs size (upper-left is better)")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    # Legend: marker shape = backend, colour = precision.
    from matplotlib.lines import Line2D

    backends = sorted({c["backend"] for c in ok})
    precisions = [p for p in _COLORS if any(c["precision"] == p for c in ok)]
    handles = [Line2D([], [], marker=_MARKERS.get(b, "P"), color="gray", linestyle="", label=b) for b in backends]
    handles += [Line2D([], [], marker="o", color=_COLORS[p], linestyle="", label=p) for p in precisions]
    if handles:
        ax2.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_report(out_dir: Path, cells: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md and (with matplotlib) report.png + report.html into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    data = {"meta": meta, "columns": [k for k, _, _ in COLUMNS], "cells": list(cells)}
    (out_dir / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    written["json"] = out_dir / "report.json"
    title = f"phi-quant compare: {meta.get('model', '')}"
    table = markdown_table(cells)
    plot_note = ""
    svg = ""
    try:
        fig = _plot(cells, title)
        fig.savefig(out_dir / "report.png", dpi=110)
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        svg = buf.getvalue()
        import matplotlib.pyplot as plt

        plt.close(fig)
        written["png"] = out_dir / "report.png"
    except ImportError:
        plot_note = "\n_matplotlib is not installed: no plot (pip install 'phi-quant[plot]')._\n"
    lines = [f"# {title}", ""]
    for k, v in meta.items():
        lines.append(f"- **{k}**: {v}")
    lines += ["", table, ""]
    lines.append("![size vs KL and tokens/s vs size](report.png)" if "png" in written else plot_note)
    lines.append("")
    (out_dir / "report.md").write_text("\n".join(lines))
    written["md"] = out_dir / "report.md"
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v.strip())}</td>" for v in line.strip("|").split("|")) + "</tr>\n"
        for line in table.splitlines()[2:]
    )
    header = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in COLUMNS)
    meta_html = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in meta.items())
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><ul>{meta_html}</ul>"
        f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"
        f"<div>{svg}</div>"
        "<script type='application/json' id='report-data'>"
        + html.escape(json.dumps(data, default=str), quote=False)
        + "</script></body></html>\n"
    )
    (out_dir / "report.html").write_text(page)
    written["html"] = out_dir / "report.html"
    return written
