"""Vendor telemetry off for the phi-quant process, before any vendor package is imported.

``import openvino`` sends a usage event (``openvino/tools/ovc/__init__.py`` ->
``init_ovc_telemetry`` -> ``openvino_telemetry.Telemetry``): with no consent file in
``~/intel/`` the library counts that as consent (``enable_opt_in_dialog=False``), writes a client
id there and sends each event from a forked child process that calls Google Analytics. During a
conversion that is a network call nobody asked for, and on Ctrl-C the child prints its own
KeyboardInterrupt traceback. Every tool built on ``openvino_telemetry`` (ovc, NNCF, optimum-intel)
decides consent in one place, ``OptInChecker.check``; phi-quant makes that answer "declined" for
its own process only (the user's ``~/intel/openvino_telemetry`` file is never touched), which is
what ``opt_in_out --opt_out`` would make it answer. The Hugging Face Hub client's telemetry is
switched off through its documented variable ``HF_HUB_DISABLE_TELEMETRY``.

Set ``PHI_QUANT_VENDOR_TELEMETRY=1`` to leave the vendors' own settings alone.
"""

from __future__ import annotations

import os

__all__ = ["KEEP_ENV", "disable_vendor_telemetry"]

KEEP_ENV = "PHI_QUANT_VENDOR_TELEMETRY"
_done = False


def _declined(self: object, enable_opt_in_dialog: bool = False, disable_in_ci: bool = False) -> object:
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult

    return ConsentCheckResult.DECLINED


def disable_vendor_telemetry() -> bool:
    """Switch vendor telemetry off for this process (idempotent); False when the user keeps it."""
    global _done
    if os.environ.get(KEEP_ENV, "").strip() not in ("", "0"):
        return False
    if _done:
        return True
    _done = True
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        from openvino_telemetry import main as ov_telemetry
        from openvino_telemetry.utils.opt_in_checker import OptInChecker
    except ImportError:  # not installed (or an unknown layout): nothing of it can run either
        return True
    OptInChecker.check = _declined  # type: ignore[method-assign]
    try:  # an instance made before us (openvino imported by the embedding program) stops sending too
        instance = ov_telemetry.Telemetry._SingletonMetaClass__single_instance  # type: ignore[attr-defined]
    except AttributeError:
        instance = None
    if instance is not None:
        instance.consent = False
    return True
