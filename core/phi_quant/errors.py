"""User-facing error types.

Every error the user can cause or fix derives from :class:`PhiQuantError` and carries a message
that says what to do next. The CLI turns them into one clear line and an exit code
(:attr:`PhiQuantError.exit_code`): 2 for bad input, 1 for failures. Library code never calls
``sys.exit``; under tests these exceptions propagate unchanged.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "PhiQuantError",
    "BadInputError",
    "CheckpointError",
    "UnsupportedModelError",
    "UnsupportedPrecisionError",
    "BadWeightsError",
    "OutputExistsError",
    "OutputLocationError",
    "DamagedOutputError",
    "BackendNotInstalledError",
    "PluginError",
    "KernelError",
    "ExportFailedError",
    "RuntimeLoadError",
    "ResourceError",
    "Interrupted",
    "os_error",
    "resource_errno",
    "RESOURCE_ERRNOS",
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


class OutputLocationError(BadInputError):
    """``-o`` cannot be used: it is (inside) the source or the Hub cache, read-only, below a file, or badly named."""


class DamagedOutputError(BadInputError):
    """An output directory no longer matches what its manifest recorded; the message names the file."""


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


class ResourceError(PhiQuantError):
    """The machine ran out of something while working: disk space, a quota, a file-size limit, memory."""


class Interrupted(PhiQuantError):
    """Ctrl-C or SIGTERM stopped the command; whatever was being written was removed."""


#: errno values that mean "out of a resource" rather than "wrong place".
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOMEM}
#: errno values that mean the chosen location cannot be written.
_LOCATION_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG,
                    errno.EISDIR, errno.ELOOP}
_HINTS = {
    errno.ENOSPC: "free some disk space or choose another -o",
    errno.EDQUOT: "your disk quota is exhausted: free some space or choose another -o",
    errno.EFBIG: "a file size limit (ulimit -f) stopped the write: raise it or choose another filesystem",
    errno.ENOMEM: "close other programs or use a machine with more memory",
    errno.EROFS: "the file system is read-only: choose another -o",
    errno.EACCES: "you may not write there: choose another -o",
    errno.EPERM: "you may not write there: choose another -o",
    errno.ENOTDIR: "a parent of that path is a file, not a directory: choose another -o",
    errno.EEXIST: "a file is in the way: choose another -o",
    errno.ENAMETOOLONG: "the name is too long for the file system: choose a shorter -o",
}


def os_error(exc: OSError, doing: str) -> PhiQuantError:
    """Turn an :class:`OSError` from ``doing`` (e.g. "writing /out/phi-quant.json") into a user error.

    Out of space or over a limit: :class:`ResourceError` (exit 1). A location that cannot be
    written: :class:`OutputLocationError` (exit 2). Anything else: :class:`ExportFailedError`.
    """
    reason = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno or 0, "")
    text = f"{doing} failed: {reason}" + (f"; {hint}" if hint else "")
    if exc.errno in RESOURCE_ERRNOS:
        return ResourceError(text)
    if exc.errno in _LOCATION_ERRNOS:
        return OutputLocationError(text)
    return ExportFailedError(text)


def resource_errno(exc: BaseException) -> int | None:
    """The resource errno behind ``exc``: its own, or one a vendor library folded into its message
    (safetensors' Rust writer, OpenVINO's and ONNX's C++ writers report a full disk as their own
    exception types, with the system's text such as "No space left on device")."""
    if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
        return exc.errno
    text = str(exc)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        if os.strerror(code) in text:
            return code
    return None
