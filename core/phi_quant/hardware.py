"""What this machine offers a quantized model: CPU and its vector extensions, RAM, GPUs.

``doctor`` shows it, and the "fits this machine" lines are computed from it. Detection reads
``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS, ``nvidia-smi`` when it is on PATH and
``/dev/dri`` render nodes; every probe is best effort and never raises.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = ["ISA_FLAGS", "MachineInfo", "detect_machine", "parse_cpuinfo", "parse_nvidia_smi"]

#: CPU features that decide which quantized kernels a runtime can use.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx", "f16c", "fma", "neon", "dotprod", "i8mm", "sve")

# /proc/cpuinfo spellings -> our names (ARM calls NEON "asimd", dot product "asimddp").
_LINUX_FLAG_NAMES = {
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "amx_tile": "amx",
    "amx_int8": "amx",
    "amx_bf16": "amx",
    "f16c": "f16c",
    "fma": "fma",
    "asimd": "neon",
    "neon": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "sve": "sve",
}

# macOS sysctl hw.optional.* keys -> our names.
_MAC_FLAG_KEYS = {
    "hw.optional.avx2_0": "avx2",
    "hw.optional.avx512f": "avx512f",
    "hw.optional.avx512vnni": "avx512_vnni",
    "hw.optional.f16c": "f16c",
    "hw.optional.fma": "fma",
    "hw.optional.neon": "neon",
    "hw.optional.arm.FEAT_DotProd": "dotprod",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
}


@dataclass
class MachineInfo:
    """A snapshot of the machine, JSON-ready through :meth:`as_dict`."""

    os: str
    arch: str
    cpu_model: str
    cpu_cores_physical: int | None
    cpu_cores_logical: int | None
    isa: dict[str, bool]
    ram_total_bytes: int
    ram_available_bytes: int
    apple_silicon: bool
    gpus: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def nvidia_vram_bytes(self) -> int | None:
        mem = [g.get("memory_total_bytes") or 0 for g in self.gpus if g.get("vendor") == "nvidia"]
        return max(mem) if mem else None


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """CPU model name and our ISA flag names from Linux ``/proc/cpuinfo`` text."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            for f in value.split():
                if f in _LINUX_FLAG_NAMES:
                    flags.add(_LINUX_FLAG_NAMES[f])
    return model, flags


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """GPUs from ``nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0]:
            continue
        try:
            mem = int(float(parts[1]) * 1024**2)  # MiB
        except ValueError:
            mem = None
        gpus.append({
            "vendor": "nvidia",
            "name": parts[0],
            "memory_total_bytes": mem,
            "driver": parts[2] if len(parts) > 2 else "",
        })
    return gpus


def _run(cmd: list[str], timeout: float = 5.0) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def _mac_cpu() -> tuple[str, set[str]]:
    model = _run(["sysctl", "-n", "machdep.cpu.brand_string"]).strip()
    flags = set()
    for key, name in _MAC_FLAG_KEYS.items():
        if _run(["sysctl", "-n", key]).strip() == "1":
            flags.add(name)
    if platform.machine() == "arm64":
        flags.add("neon")  # every Apple Silicon core has it
    return model, flags


def _dri_gpus() -> list[dict[str, Any]]:
    gpus = []
    dri = Path("/dev/dri")
    if not dri.is_dir():
        return gpus
    for node in sorted(dri.glob("renderD*")):
        vendor_file = Path("/sys/class/drm") / node.name / "device" / "vendor"
        vendor_id = vendor_file.read_text().strip() if vendor_file.exists() else ""
        vendor = {"0x8086": "intel", "0x1002": "amd", "0x10de": "nvidia"}.get(vendor_id, vendor_id or "unknown")
        gpus.append({"vendor": vendor, "name": f"render node {node.name}", "device": str(node)})
    return gpus


def detect_machine() -> MachineInfo:
    """Probe the machine; missing tools and files only leave fields empty."""
    system = platform.system()
    arch = platform.machine()
    notes: list[str] = []
    model, flags = "", set()
    if system == "Linux":
        try:
            model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
        except OSError:
            notes.append("could not read /proc/cpuinfo")
    elif system == "Darwin":
        model, flags = _mac_cpu()
    model = model or platform.processor() or arch
    vm = psutil.virtual_memory()
    apple = system == "Darwin" and arch == "arm64"
    gpus: list[dict[str, Any]] = []
    if shutil.which("nvidia-smi"):
        gpus += parse_nvidia_smi(
            _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"])
        )
    for g in _dri_gpus():
        if not (g["vendor"] == "nvidia" and any(x["vendor"] == "nvidia" for x in gpus)):
            gpus.append(g)
    if apple:
        gpus.append({"vendor": "apple", "name": f"{model} integrated GPU (Metal, unified memory)"})
    return MachineInfo(
        os=f"{system} {platform.release()}",
        arch=arch,
        cpu_model=model,
        cpu_cores_physical=psutil.cpu_count(logical=False),
        cpu_cores_logical=psutil.cpu_count(logical=True) or os.cpu_count(),
        isa={f: f in flags for f in ISA_FLAGS},
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        apple_silicon=apple,
        gpus=gpus,
        notes=notes,
    )
