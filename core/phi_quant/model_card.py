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


def _quantization_lines(quant: dict[str, Any] | None) -> list[str]:
    """The per-tensor plan as written: recipe, bits per weight, scheme counts and every tensor."""
    if not quant:
        return []
    counts = ", ".join(f"{name} x{n}" for name, n in (quant.get("schemes") or {}).items())
    lines = ["", "## Quantization", "",
             f"- Recipe: **{quant.get('recipe')}**; {quant.get('bits_per_weight')} bits per weight over "
             f"{quant.get('parameters', 0):,} parameters ({_fmt_bytes(quant.get('tensor_bytes'))} of tensor data)",
             f"- Schemes: {counts}", "", "<details><summary>Every tensor</summary>", "",
             "| tensor | stored as | scheme | bits/weight | bytes | why |", "|---|---|---|---|---|---|"]
    for t in quant.get("tensors") or []:
        lines.append(f"| `{t.get('name')}` | `{t.get('output')}` | {t.get('scheme')} | {t.get('bits_per_weight')} | "
                     f"{t.get('bytes')} | {t.get('reason', '')} |")
    lines += ["", "</details>"]
    return lines


def _calibration_lines(calib: dict[str, Any] | None) -> list[str]:
    """What the calibrated recipe saw: the text (name, sha256), the tokens, and what AWQ did."""
    if not calib:
        return []
    from .calib.synthetic import SYNTHETIC  # only for a calibrated export, which has loaded phi_quant.calib

    st = calib.get("statistics") or {}
    text = st.get("text") or {}
    files = ", ".join(f"`{f.get('path')}`" for f in text.get("files") or [])
    if text.get("name") == SYNTHETIC:
        source = f"synthetic token ids, no text (the rule, sha256 `{text.get('sha256')}`)"
    else:
        source = f"the {text.get('name')} text, sha256 `{text.get('sha256')}` ({files})"
    lines = ["", "## Calibration", "",
             f"- Recipe **{(calib.get('recipe') or {}).get('name')}** calibrated on {st.get('tokens')} tokens "
             f"({st.get('sequences')} sequence(s) of at most {st.get('window')}) of {source}",
             f"- Statistics key `{st.get('key')}`" + (f", kept in `{st['cache']}`" if st.get("cache") else "")]
    awq = calib.get("awq")
    if awq:
        lines.append(f"- AWQ scaled {awq.get('folds')} folds (norm -> qkv, v -> o, norm -> gate_up, up -> down); "
                     f"mean output error {awq.get('mean_error_ratio')} x plain rounding's")
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
    lines += _quantization_lines(manifest.get("quantization"))
    lines += _calibration_lines(manifest.get("calibration"))
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
