"""Calibration: the numpy oracle streamed over a text, layer by layer, for the recipes that use data.

``--recipe awq`` / ``gptq`` (and combinations such as ``awq+gptq``) choose quantized values from
what a model's matmuls actually see. This package computes that once per model and text, in the core,
for every backend:

- :mod:`.request` — the calibration text (default :func:`phi_quant.texts.calibration_text`,
  never the evaluation text), the token count and window, the cache key;
- :mod:`.collect` — the streaming pass: one layer's weights at a time, the architecture's own layer
  forward (:meth:`phi_quant.arch.base.Architecture.calibration_layer`), per-input statistics;
- :mod:`.stats` — the statistics (mean |x|, mean x², XᵀX per matmul input) and their file;
- :mod:`.awq` — activation-aware scale search against the backend's own schemes;
- :mod:`.source` — the checkpoint with the scales folded into its tensor stream;
- :mod:`.prepare` — the entry point ``convert`` and the plugin facade call.

The maths and costs are in ``docs/calibration.md`` and ``docs/performance.md``.
"""

from __future__ import annotations

from typing import Any

from ..errors import BadInputError
from .prepare import calibrated_source, calibration_statistics, needs_calibration
from .request import DEFAULT_TOKENS, DEFAULT_WINDOW, MIN_TOKENS, CalibrationRequest, request_from_options
from .source import CalibratedSource, CalibrationView
from .stats import CalibrationStats, Point, PointStats

__all__ = ["calibrated_source", "calibration_statistics", "needs_calibration", "check_calibration_options",
           "CalibrationRequest", "request_from_options", "CalibratedSource", "CalibrationView", "CalibrationStats",
           "Point", "PointStats", "DEFAULT_TOKENS", "DEFAULT_WINDOW", "MIN_TOKENS"]


def check_calibration_options(options: Any) -> None:
    """Refuse calibration options that cannot work, before any work is done."""
    given = [flag for flag, value in (("--calibration", getattr(options, "calibration", None)),
                                      ("--calibration-tokens", getattr(options, "calibration_tokens", None)),
                                      ("--calibration-cache", getattr(options, "calibration_cache", None)))
             if value is not None]
    if not needs_calibration(options):
        if given:
            raise BadInputError(f"{', '.join(given)} only apply to recipes that use calibration data (awq, gptq and "
                                f"their combinations); recipe {options.recipe or 'rtn'} is data-free: add e.g. --recipe awq+gptq")
        return
    request = request_from_options(options)  # reads the text file: a missing one fails here
    if request.cache is not None and request.cache.is_dir():
        raise BadInputError(f"--calibration-cache {request.cache} is a directory; give a file path "
                            f"(e.g. {request.cache}/stats.safetensors)")
