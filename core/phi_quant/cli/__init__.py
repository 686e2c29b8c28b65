"""The ``phi-quant`` command line: a click group with one module per command.

Errors from :mod:`phi_quant.errors` become one ``Error: ...`` line on stderr and the error's
exit code (2 bad input, 1 failure); so do Ctrl-C and SIGTERM (exit 1), a full disk, a file-size
limit and running out of memory anywhere. With ``--debug`` or ``PHI_QUANT_DEBUG=1`` they
propagate with their traceback instead (tests and bug reports). docs/errors.md lists them all.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from .. import __version__
from ..errors import Interrupted, PhiQuantError, ResourceError, os_error, resource_errno
from ..vendor_telemetry import disable_vendor_telemetry

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
        except BaseException as exc:  # noqa: BLE001 - sorted below: ours, interrupts and resources are one line
            error = _as_user_error(exc)
            if error is None:
                raise
            if debug_enabled(ctx):
                if error is exc:
                    raise
                raise error from exc
            raise CliError(error) from exc


#: The signals (as words) received by this process; recorded by :func:`main`'s handlers.
_SIGNALS: list[str] = []


def _as_user_error(exc: BaseException) -> PhiQuantError | None:
    """The one-line error ``exc`` stands for, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, KeyboardInterrupt) or (_SIGNALS and isinstance(exc, Exception)):
        # (a vendor library may turn our KeyboardInterrupt into its own error: say what happened)
        what = exc.args[0] if isinstance(exc, KeyboardInterrupt) and exc.args else (
            _SIGNALS[0] if _SIGNALS else "interrupted (Ctrl-C)")
        return Interrupted(f"{what}; nothing partial was left behind")
    if isinstance(exc, PhiQuantError):
        return exc
    if isinstance(exc, MemoryError):
        return ResourceError("out of memory; close other programs or use a machine with more memory")
    if isinstance(exc, OSError) and resource_errno(exc) is not None:  # a full disk or a limit, at any depth
        return os_error(exc, "writing to disk" if exc.filename is None else f"using {exc.filename}")
    return None


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
    from . import batch, doctor, evaluate, inspect, plugins, quantize, run, verify

    for module in (plugins, doctor, inspect, quantize, run, evaluate, verify, batch):
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


def _on_signal(signum: int, frame: object) -> None:
    """The first Ctrl-C or SIGTERM unwinds (the conversion removes its partial output); later ones
    are ignored so that cleanup can finish (a cell runner sends SIGTERM after the user's Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
    _SIGNALS.append(what)
    raise KeyboardInterrupt(what)


def main() -> None:
    """Console-script entry point. SIGTERM unwinds like Ctrl-C, so a killed conversion cleans up too.

    After a signal the process ends with ``os._exit`` once stdout/stderr are flushed: a Ctrl-C that
    lands inside a C extension's embedded Python (pybind11 modules evaluate code while they import)
    leaves the interpreter marked "killed by SIGINT", which would otherwise turn exit code 1 into -2.
    """
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    disable_vendor_telemetry()
    try:
        cli(prog_name="phi-quant")
    except SystemExit as exc:
        if not _SIGNALS:
            raise
        code = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
