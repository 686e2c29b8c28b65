"""``phi-quant verify OUT``: does the output still hold exactly what ``quantize`` wrote?"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import DamagedOutputError
from ..verify import Problem, damage_message, verify_output
from ._common import emit_json, fmt_bytes, json_option

__all__ = ["command"]


@click.command("verify")
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--quick", is_flag=True, help="Compare file sizes only (no hashing).")
@json_option
def command(output: Path, quick: bool, as_json: bool) -> None:
    """Check every file of OUT against the sizes and sha256 recorded in its phi-quant.json; name any
    file that is missing, changed or was not written by phi-quant."""
    report = verify_output(output, full=not quick)
    if as_json:
        emit_json(report)
        if not report["ok"]:
            raise SystemExit(DamagedOutputError.exit_code)
        return
    if not report["ok"]:
        raise DamagedOutputError(damage_message(output, [Problem(**p) for p in report["problems"]]))
    click.echo(f"{output}: {report['files']} files, {fmt_bytes(report['bytes'])}, match phi-quant.json "
               f"({report['checked']})")
