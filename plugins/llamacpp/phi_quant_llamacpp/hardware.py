"""What this llama.cpp build can use here: CPU features from ggml's system info, GPU offload."""

from __future__ import annotations

import os
import re

from phi_quant.types import HardwareReport

__all__ = ["detect"]

#: Entries of ggml's system info that describe the build, not the CPU.
_BUILD_FLAGS = {"LLAMAFILE", "OPENMP", "REPACK", "KLEIDIAI", "ACCELERATE"}


def detect() -> HardwareReport:
    """Never raises: a missing or broken llama-cpp-python gives ``available=False`` with a note."""
    try:
        import llama_cpp
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
        return HardwareReport(backend="llamacpp", available=False, notes=[f"llama-cpp-python not importable: {e}"])
    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    flags = {m.group(1) for m in re.finditer(r"([A-Z0-9_]+) = 1", info)}
    features = sorted(flags - _BUILD_FLAGS)
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    devices = [{"name": "CPU", "type": "cpu", "threads": os.cpu_count(), "features": features}]
    accelerators = []
    notes = []
    if gpu:
        accelerators.append("gpu-offload")
        notes.append("this llama.cpp build can offload layers to a GPU (n_gpu_layers)")
    else:
        notes.append("CPU-only llama.cpp build; reinstall llama-cpp-python with CMAKE_ARGS=-DGGML_CUDA=on (or METAL/VULKAN) for GPU offload")
    return HardwareReport(
        backend="llamacpp",
        available=True,
        devices=devices,
        accelerators=accelerators,
        notes=notes,
        details={
            "llama_cpp_python": getattr(llama_cpp, "__version__", "?"),
            "system_info": info.strip(),
            "supports_gpu_offload": gpu,
            "supports_mmap": bool(llama_cpp.llama_supports_mmap()),
            "build_flags": sorted(flags & _BUILD_FLAGS),
        },
    )
