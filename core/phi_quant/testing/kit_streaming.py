"""The kit's streaming check: convert large generated checkpoints in fresh processes, measure peak RSS.

Two checkpoints with the same tensor shapes and different numbers of layers (about 0.55 and
1.1 GB of bf16 weights) are converted. A streaming backend needs about its largest tensor plus
its runtime's imports on both, so its peak stays put; one that keeps the model, or even just its
quantized output, in memory grows with the layer count. For a backend that writes PhiMoE, two
PhiMoE checkpoints with the same shapes and 8 and 16 experts (0.71 and 1.11 GB) are converted
the same way: stacking experts must not gather them, so the peak must not grow with the expert
count either. The checkpoints are generated once per machine and cached next to the tiny ones.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import types
from pathlib import Path
from ..types import ExportOptions

__all__ = ["LARGE_BYTES", "SMALL_BYTES", "MOE_EXPERTS", "large_checkpoint", "large_moe_checkpoint",
           "measure_conversion_rss"]

#: Weight bytes of the two generated checkpoints.
LARGE_BYTES = 1_100_000_000
SMALL_BYTES = 550_000_000
#: Expert counts of the two generated PhiMoE checkpoints (small, large).
MOE_EXPERTS = (8, 16)

_CODE = """
import importlib, json, sys
from phi_quant.convert import convert
from phi_quant.errors import BackendNotInstalledError
from phi_quant.plugins import get_manager
from phi_quant.types import ExportOptions

backend, module, checkpoint, out, options = json.loads({args!r})
if module:
    try:
        get_manager().get(backend)
    except BackendNotInstalledError:
        get_manager().register(importlib.import_module(module), backend)
convert(checkpoint, backend, ExportOptions(**json.loads(options)), out)
"""


def large_checkpoint(min_bytes: int = LARGE_BYTES) -> Path:
    """A generated checkpoint of ``min_bytes``, built on first use (atomically, safe for parallel runs)."""
    from .factory import cached_build, make_large_checkpoint

    return cached_build(f"large-bf16-{min_bytes}", lambda tmp: make_large_checkpoint(tmp, min_bytes))


def large_moe_checkpoint(num_experts: int = MOE_EXPERTS[1]) -> Path:
    """A generated PhiMoE checkpoint with ``num_experts`` experts per layer, built on first use."""
    from .factory import cached_build, make_large_moe_checkpoint

    return cached_build(f"large-moe-bf16-{num_experts}", lambda tmp: make_large_moe_checkpoint(tmp, num_experts))


def _plugin_module(backend: str) -> str:
    """The backend's plugin module name when it is a module (so the child can register it too)."""
    from ..plugins import get_manager

    plugin = getattr(get_manager().get(backend), "_plugin", None)
    return plugin.__name__ if isinstance(plugin, types.ModuleType) else ""


def measure_conversion_rss(backend: str, options: ExportOptions, workdir: Path, min_bytes: int = LARGE_BYTES,
                           timeout: float = 900, checkpoint: Path | None = None) -> tuple[float, float, str]:
    """Convert the generated checkpoint of ``min_bytes`` (or ``checkpoint``) with ``backend`` in a subprocess.

    :returns: (peak RSS in MiB, checkpoint weights in MiB, error text or "").
    """
    from .rss import run_with_peak_rss

    checkpoint = checkpoint or large_checkpoint(min_bytes)
    weights_mb = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors")) / 2**20
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "out"
    args = [backend, _plugin_module(backend), str(checkpoint), str(out), json.dumps(dataclasses.asdict(options))]
    try:
        result = run_with_peak_rss(_CODE.format(args=json.dumps(args)), timeout=timeout)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    error = ""
    if result.returncode != 0:
        lines = result.output.strip().splitlines()
        error = lines[-1] if lines else f"exit status {result.returncode}"
    return result.peak_rss / 2**20, weights_mb, error
