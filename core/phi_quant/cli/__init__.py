"""The ``phi-quant`` command line: a click group with one module per command.

Errors from :mod:`phi_quant.errors` become one ``Error: ...`` line on stderr and the error's
exit code (2 bad input, 1 failure). With ``--debug`` or ``PHI_QUANT_DEBUG=1`` they propagate
with their traceback instead (tests and bug reports).
"""

from __future__ import annotations

import os

import click

from .. import __version__
from ..errors import PhiQuantError

__all__ = ["cli", "main", "PhiQuantGroup"]


class CliError(click.ClickException):
    """A :class:`PhiQuantError` at the CLI boundary: one line, the error's exit code."""

    def __init__(self, error: PhiQuantError):
        super().__init__(" ".join(str(error).split()))
        self.exit_code = error.exit_code


def debug_enabled(ctx: click.Context | None = None) -> bool:
    if os.environ.get("PHI_QUANT_DEBUG", "").strip() not in ("", "0"):
        return True
    root = ctx.find_root() if ctx is not None else None
    return bool(root and root.obj and root.obj.get("debug"))


class PhiQuantGroup(click.Group):
    """A click group that turns phi-quant errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PhiQuantError as exc:
            if debug_enabled(ctx):
                raise
            raise CliError(exc) from exc


@click.group(cls=PhiQuantGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="phi-quant")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors (also PHI_QUANT_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Quantize Microsoft Phi models and export them for llama.cpp, ONNX Runtime GenAI, OpenVINO
    and MLX. Backends are plugins: see `phi-quant plugins`."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register_commands() -> None:
    from . import batch, doctor, evaluate, inspect, plugins, quantize, run

    for module in (plugins, doctor, inspect, quantize, run, evaluate, batch):
        cli.add_command(module.command)
    for name in ("compare", "recommend"):  # optional commands, present when their module is
        try:
            module = __import__(f"{__name__}.{name}", fromlist=["command"])
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        cli.add_command(module.command)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="phi-quant")
