"""User-facing error types.

Every error the user can cause or fix derives from :class:`PhiQuantError` and carries a message
that says what to do next. The CLI turns them into one clear line and an exit code
(:attr:`PhiQuantError.exit_code`): 2 for bad input, 1 for failures. Library code never calls
``sys.exit``; under tests these exceptions propagate unchanged.
"""

from __future__ import annotations

__all__ = [
    "PhiQuantError",
    "BadInputError",
    "CheckpointError",
    "UnsupportedModelError",
    "UnsupportedPrecisionError",
    "BadWeightsError",
    "OutputExistsError",
    "BackendNotInstalledError",
    "PluginError",
    "KernelError",
    "ExportFailedError",
    "RuntimeLoadError",
]


class PhiQuantError(Exception):
    """Base of all phi-quant errors; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class BadInputError(PhiQuantError):
    """The user gave something we cannot work with (exit 2)."""

    exit_code = 2


class CheckpointError(BadInputError):
    """A checkpoint is missing, truncated, corrupt, unreadable, or in a refused format."""


class UnsupportedModelError(BadInputError):
    """The checkpoint is not of an architecture phi-quant reads (``phi_quant.arch``), or is inconsistent."""


class UnsupportedPrecisionError(BadInputError):
    """A backend was asked for a precision, scheme or option it does not offer."""


class BadWeightsError(BadInputError):
    """A tensor holds NaN/Inf or otherwise unusable values; the message names the tensor."""


class OutputExistsError(BadInputError):
    """The output directory exists and ``--force`` was not given."""


class BackendNotInstalledError(BadInputError):
    """The requested backend is not installed; the message names the package to install."""


class PluginError(PhiQuantError):
    """A plugin failed to load or raised inside a hook; the message names the plugin."""

    def __init__(self, plugin: str, message: str):
        super().__init__(f"plugin {plugin!r}: {message}")
        self.plugin = plugin


class KernelError(PhiQuantError):
    """The quantization kernel rejected its arguments or failed."""


class ExportFailedError(PhiQuantError):
    """A backend could not finish writing its output (nothing was left at the destination)."""


class RuntimeLoadError(PhiQuantError):
    """An exported model could not be loaded or run in its vendor runtime."""
