"""What ONNX Runtime (and onnxruntime-genai) can use on this machine, for ``doctor``."""

from __future__ import annotations

import os

from phi_quant.types import HardwareReport

from .constants import TARGET_PROVIDERS

__all__ = ["detect"]


def detect() -> HardwareReport:
    """List onnxruntime's execution providers; never raises when a runtime is missing."""
    try:
        import onnxruntime as ort
    except Exception as exc:  # noqa: BLE001 - doctor must keep going
        return HardwareReport(backend="onnx", available=False, notes=[f"onnxruntime is not importable: {exc}"])
    providers = list(ort.get_available_providers())
    notes: list[str] = []
    details = {"onnxruntime": ort.__version__, "providers": providers}
    try:
        import onnxruntime_genai as og

        details["onnxruntime_genai"] = getattr(og, "__version__", "unknown")
        details["genai_cuda"] = bool(og.is_cuda_available())
        details["genai_dml"] = bool(og.is_dml_available())
    except Exception as exc:  # noqa: BLE001
        notes.append(f"onnxruntime-genai is not importable ({exc}); exports cannot be run: pip install onnxruntime-genai")
    targets = [t for t, p in TARGET_PROVIDERS.items() if p in providers]
    details["runnable_targets"] = targets
    accelerators = [p for p in providers if p not in ("CPUExecutionProvider", "AzureExecutionProvider")]
    if not accelerators:
        notes.append("only the CPU provider is available: cuda/dml exports can be written here but not run")
    devices = [{"name": "CPU", "type": "cpu", "provider": "CPUExecutionProvider", "threads": os.cpu_count()}]
    for p in accelerators:
        devices.append({"name": p.replace("ExecutionProvider", ""), "type": "gpu", "provider": p})
    return HardwareReport(
        backend="onnx",
        available="onnxruntime_genai" in details,
        devices=devices,
        accelerators=accelerators,
        notes=notes,
        details=details,
    )
