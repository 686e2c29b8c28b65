"""What OpenVINO can use on this machine: its devices and their properties."""

from __future__ import annotations

from typing import Any

from phi_quant.types import HardwareReport

__all__ = ["detect"]

_PROPERTIES = ("FULL_DEVICE_NAME", "DEVICE_TYPE", "OPTIMIZATION_CAPABILITIES", "DEVICE_ARCHITECTURE", "GPU_DEVICE_TOTAL_MEM_SIZE")


def _property(core: Any, device: str, name: str) -> Any:
    try:
        value = core.get_property(device, name)
    except Exception:  # a device that lacks a property raises; that is not an error for us
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return value if isinstance(value, (int, float, bool)) else str(value)


def detect() -> HardwareReport:
    try:
        import openvino as ov
    except ImportError:
        return HardwareReport("openvino", False, notes=["openvino is not installed: pip install phi-quant-openvino"])
    try:
        core = ov.Core()
        names = list(core.available_devices)
    except Exception as exc:  # a broken driver must not break `doctor`
        return HardwareReport("openvino", False, notes=[f"OpenVINO could not list devices: {exc}"])
    devices = []
    for name in names:
        entry: dict[str, Any] = {"name": name, "type": name.split(".")[0].lower()}
        for prop in _PROPERTIES:
            value = _property(core, name, prop)
            if value is not None:
                entry[prop.lower()] = value
        devices.append(entry)
    accelerators = [d["name"] for d in devices if d["type"] in ("gpu", "npu")]
    notes = []
    cpu = next((d for d in devices if d["type"] == "cpu"), None)
    if cpu and "BF16" in (cpu.get("optimization_capabilities") or []):
        notes.append("CPU runs f32 models in bf16 by default here; phi-quant asks for f32 when it measures fidelity")
    if "NPU" not in names:
        notes.append("no NPU found; int4 preset 'npu' still exports a symmetric model for one")
    return HardwareReport(
        "openvino", True, devices=devices, accelerators=accelerators, notes=notes, details={"openvino": ov.__version__}
    )
