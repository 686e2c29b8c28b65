"""Small helpers shared by the commands: JSON output, tables, option parsing."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

import click

from ..errors import BadInputError
from ..manifest import _jsonable

__all__ = ["json_option", "emit_json", "table", "parse_option_value", "parse_options", "fmt_bytes"]

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")


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
