"""The ``README.md`` written into every output: what was done and how to run it.

Built from the manifest alone, so the card and ``phi-quant.json`` cannot disagree.
"""

from __future__ import annotations

from typing import Any

__all__ = ["render_model_card"]


def _fmt_bytes(n: int | None) -> str:
    if not n:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _options_lines(options: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in options.items():
        if key == "extra":
            for k, v in (value or {}).items():
                lines.append(f"- `{k}` (backend option): `{v}`")
        elif value is not None:
            lines.append(f"- `{key}`: `{value}`")
    return lines


def render_model_card(manifest: dict[str, Any], run_instructions: str = "", output_name: str = "OUTPUT") -> str:
    """Markdown text of the model card for one output directory."""
    src = manifest["source"]
    be = manifest["backend"]
    tools = manifest.get("tools", {})
    origin = src.get("hub_id") or src.get("model")
    lines = [
        f"# {src.get('family', 'Phi')} — {manifest['precision']} for {be['runtime']}",
        "",
        f"This directory holds `{origin}` converted by phi-quant {tools.get('phi-quant', '')} with the "
        f"`{be['name']}` backend ({' '.join(x for x in (be.get('distribution'), be.get('version')) if x) or 'in-process'}) "
        f"to the {be['format']} format.",
        "",
        "## What was done",
        "",
        f"- Precision: **{manifest['precision']}**, scheme **{manifest['scheme']}**",
        f"- Source: `{origin}` ({src.get('architecture')}, {src.get('parameters', 0):,} parameters, "
        f"{_fmt_bytes(src.get('weights_bytes'))} of weights)",
        f"- Converted on {manifest.get('created', '?')} with Python {tools.get('python', '?')} on {tools.get('platform', '?')}",
    ]
    pkgs = tools.get("packages") or {}
    if pkgs:
        lines.append("- Vendor packages: " + ", ".join(f"{k} {v}" for k, v in sorted(pkgs.items())))
    opts = _options_lines(manifest.get("options", {}))
    if opts:
        lines += ["", "Options:", "", *opts]
    notes = manifest.get("notes") or []
    if notes:
        lines += ["", "## Notes and fallbacks", "", *[f"- {n}" for n in notes]]
    lines += ["", "## Run it", ""]
    if run_instructions.strip():
        lines += [f"With {be['runtime']}:", "", run_instructions.strip(), ""]
    lines += [
        "With phi-quant (needs `pip install phi-quant "
        + (be.get("distribution") or f"phi-quant-{be['name']}")
        + "`):",
        "",
        "```sh",
        f'phi-quant run {output_name} --prompt "Why is the sky blue?"',
        f"phi-quant eval {output_name} --reference {src.get('model')}",
        "```",
        "",
        "`phi-quant.json` next to this file records the exact options, the size and sha256 of every file and the "
        f"tool versions; `phi-quant verify {output_name}` checks the files against it.",
        "",
    ]
    return "\n".join(lines)
