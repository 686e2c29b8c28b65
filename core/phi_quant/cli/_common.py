"""Small helpers shared by the commands: JSON output, tables, option parsing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import click

from ..errors import BadInputError
from ..manifest import _jsonable

__all__ = ["json_option", "emit_json", "table", "parse_option_value", "parse_options", "fmt_bytes", "recipe_option",
           "check_recipe_name", "calibration_options", "RECIPE_HELP"]

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")

RECIPE_HELP = ("How quantized values are chosen: rtn (default: each vendor's round to nearest), clip, hqq (data-free), "
               "awq, gptq (calibrated), combined with '+', e.g. awq+gptq (see docs/recipes.md).")


def check_recipe_name(ctx: Any, param: Any, value: Any) -> Any:
    """click callback: a recipe name (or several, for ``multiple=True``) that get_recipe accepts, lower-cased."""
    from ..quant.recipes import get_recipe

    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    for v in values:
        try:
            get_recipe(v)
        except BadInputError as exc:
            raise click.BadParameter(str(exc)) from None
    out = [v.strip().lower() for v in values]
    return out[0] if isinstance(value, str) else tuple(out)


def recipe_option(*decls: str, **kw: Any) -> Any:
    return click.option(*(decls or ("--recipe",)), callback=check_recipe_name, metavar="NAME",
                        help=kw.pop("help", RECIPE_HELP), **kw)


class CalibrationSource(click.ParamType):
    """An existing text file, or the word ``synthetic`` (kept as that string)."""

    name = "calibration"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from ..calib.synthetic import SYNTHETIC, is_synthetic

        if is_synthetic(value):
            return SYNTHETIC
        return click.Path(exists=True, dir_okay=False, path_type=Path).convert(value, param, ctx)


def calibration_options(f: Any) -> Any:
    """``--calibration FILE``, ``--calibration-tokens N`` and ``--calibration-cache PATH``."""
    f = click.option("--calibration-cache", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
                     help="Keep the calibration statistics in PATH and reuse them when model, text and token count "
                          "match (else they are computed into a temporary file).")(f)
    f = click.option("--calibration-tokens", type=click.IntRange(min=16), metavar="N",
                     help="Tokens of the calibration text to use (default 2048).")(f)
    f = click.option("--calibration", type=CalibrationSource(), metavar="FILE|synthetic",
                     help="Calibration text for awq/gptq (default: phi-quant's calibration text, never the evaluation "
                          "text), or 'synthetic': token ids drawn from the model's own vocabulary, no data at all "
                          "(see docs/calibration.md).")(f)
    return f


def emit_json(data: Any) -> None:
    click.echo(json.dumps(_jsonable(data), indent=2))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table with left-aligned columns."""
    rows = [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def parse_option_value(text: str) -> Any:
    """``--option`` values: int, then float, then true/false, else the string itself."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInputError(f"--option expects key=value, got {pair!r}")
        out[key.strip()] = parse_option_value(value)
    return out


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def stderr_is_tty() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())
