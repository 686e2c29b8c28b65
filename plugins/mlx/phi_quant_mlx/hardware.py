"""What MLX can use here: Apple GPU through Metal when present, the CPU otherwise (``mlx[cpu]``)."""

from __future__ import annotations

import platform

from phi_quant.types import HardwareReport

__all__ = ["detect"]


def detect() -> HardwareReport:
    """Probe mlx without raising: a missing or broken install is reported, not thrown."""
    try:
        import mlx.core as mx
    except Exception as exc:  # ImportError, or a broken native library
        hint = "pip install mlx-lm" if platform.system() == "Darwin" else "pip install 'mlx[cpu]' mlx-lm"
        return HardwareReport(backend="mlx", available=False, notes=[f"mlx is not importable ({exc}); {hint}"])
    devices = [{"name": platform.processor() or platform.machine(), "type": "cpu"}]
    accelerators: list[str] = []
    notes: list[str] = []
    details = {"mlx_version": getattr(mx, "__version__", "?"), "platform": f"{platform.system()} {platform.machine()}"}
    metal = getattr(mx, "metal", None)
    try:
        has_metal = bool(metal is not None and metal.is_available())
    except Exception:  # pragma: no cover - depends on the machine
        has_metal = False
    if has_metal:
        accelerators.append("metal")
        info = {}
        try:
            info = dict(mx.device_info() if hasattr(mx, "device_info") else metal.device_info())
        except Exception:  # pragma: no cover
            pass
        devices.append({
            "name": str(info.get("device_name", "Apple GPU")),
            "type": "gpu",
            "memory_bytes": int(info.get("memory_size", 0) or 0),
            "architecture": str(info.get("architecture", "")),
        })
        notes.append("Apple Silicon GPU through Metal (unified memory)")
    else:
        notes.append("no Metal device: mlx runs on the CPU (correct but much slower than on Apple Silicon)")
    try:
        details["default_device"] = str(mx.default_device())
    except Exception:  # pragma: no cover
        pass
    return HardwareReport(backend="mlx", available=True, devices=devices, accelerators=accelerators, notes=notes, details=details)
