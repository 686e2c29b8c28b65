"""From a recipe that needs data to the source a backend exports: statistics, AWQ search, wrapped stream.

:func:`calibrated_source` is the one entry point; ``convert`` calls it before ``export`` and the
plugin facade before the ``quantize`` hook, so both see the same scaled tensors and statistics:

1. the statistics (:func:`calibration_statistics`): reused from ``--calibration-cache`` or from
   this process when the key matches (model fingerprint, text, tokens, window), else collected by
   the streaming pass (:mod:`.collect`) into the cache file or a temporary one;
2. for ``awq``: the backend's per-tensor plan (``tensor_plan`` hook) gives each matmul's scheme,
   and every layer's folds are searched against it (:mod:`.awq`), reading one layer at a time;
3. a :class:`~.source.CalibratedSource` over the checkpoint with the scales and statistics.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import BadInputError, UnsupportedPrecisionError
from ..quant.recipes import get_recipe
from ..quant.recipes.calibrated import is_calibrated
from ..types import NullProgress, Progress
from .awq import LayerScales, search_layer
from .collect import _Layer, collect_statistics
from .request import CalibrationRequest, model_fingerprint, request_from_options
from .source import CalibratedSource, CalibrationView
from .stats import CalibrationStats, point_of

__all__ = ["needs_calibration", "calibration_statistics", "calibrated_source", "describe_mismatch"]

_STATS: dict[str, CalibrationStats] = {}  # key -> statistics computed in this process
_PREPARED: dict[tuple, tuple[Any, CalibratedSource]] = {}
_TMP: list[Path] = []


def needs_calibration(options: Any) -> bool:
    """True when ``options.recipe`` needs calibration statistics."""
    return is_calibrated(get_recipe(getattr(options, "recipe", None)))


def _tmp_dir() -> Path:
    if not _TMP:
        _TMP.append(Path(tempfile.mkdtemp(prefix="phi-quant-calibration-")))
        atexit.register(shutil.rmtree, _TMP[0], True)
    return _TMP[0]


def describe_mismatch(meta: dict[str, Any], want: dict[str, Any]) -> str:
    """Which of model, text, tokens, window differ between a cache file and this request."""
    diffs = []
    if (meta.get("model") or {}).get("sha256") != want["model"]["sha256"]:
        diffs.append(f"model {(meta.get('model') or {}).get('path', '?')}")
    if (meta.get("text") or {}).get("sha256") != want["text"]["sha256"]:
        diffs.append(f"text {(meta.get('text') or {}).get('name', '?')} (sha256 {str((meta.get('text') or {}).get('sha256'))[:12]})")
    for k in ("tokens", "window", "version"):
        if meta.get(k) != want.get(k):
            diffs.append(f"{k} {meta.get(k)}")
    return ", ".join(diffs) or "its key"


def calibration_statistics(source: Any, request: CalibrationRequest, progress: Progress | None = None) -> CalibrationStats:
    """The statistics of ``source`` for ``request``: from the cache file, this process, or a new pass."""
    from .. import __version__
    from .stats import STATS_VERSION

    fingerprint = model_fingerprint(source)
    sequences = request.sequences(source.hf_tokenizer())
    used = sum(len(s) for s in sequences)
    key = request.key(fingerprint, used)
    meta = {"key": key, "model": fingerprint, "text": request.text.record(), "tokens": used,
            "sequences": len(sequences), "window": request.window, "phi_quant": __version__}
    cache = request.cache
    if cache is not None and cache.exists():
        if cache.is_dir():
            raise BadInputError(f"--calibration-cache {cache} is a directory; give a file path (e.g. {cache}/stats.safetensors)")
        try:
            stats = CalibrationStats(cache)
        except BadInputError as e:
            raise BadInputError(f"--calibration-cache {cache} is not a phi-quant statistics file ({e}); "
                                "choose another path or delete it") from None
        if stats.key != key:
            raise BadInputError(f"--calibration-cache {cache} holds statistics of another calibration "
                                f"({describe_mismatch(stats.meta, meta | {'version': STATS_VERSION})} differ); "
                                "delete it or choose another path")
        return stats
    if cache is None and key in _STATS and _STATS[key].path.exists():
        return _STATS[key]
    target = cache if cache is not None else _tmp_dir() / f"{key}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    seconds = collect_statistics(source, sequences, partial, meta, progress)
    os.replace(partial, target)
    stats = CalibrationStats(target)
    stats.collect_seconds = seconds
    _STATS[key] = stats
    return stats


def _plan_schemes(backend: Any, source: Any, options: Any) -> dict[str, Any]:
    plan = backend.tensor_plan(source, options) if backend is not None else None
    if plan is None:
        name = getattr(backend, "name", "?")
        raise UnsupportedPrecisionError(
            f"recipe {options.recipe}: backend {name!r} does not share its per-tensor plan (the tensor_plan hook, "
            "contract 1.4), so AWQ cannot search against its schemes; use --recipe gptq")
    return {p.info.name: p.scheme for p in plan}


def _search(source: Any, stats: CalibrationStats, schemes: dict[str, Any], grid: int,
            progress: Progress) -> dict[int, LayerScales]:
    config = source.config
    arch = config.arch
    tied = bool(config.tie_word_embeddings)
    names = {(i.role, i.layer, i.expert): i.name for i in source.tensor_infos()}
    out: dict[int, LayerScales] = {}
    progress.start(sum(i.nbytes for i in source.tensor_infos() if i.layer is not None), "awq search")
    try:
        for n in range(config.num_layers):
            folds = arch.scale_folds(config, n)
            if not folds:
                continue
            weights = _Layer(source, n)

            def scheme(role, expert, n=n):
                return schemes.get(names.get((role, n, expert)))

            def point(role, expert, n=n):
                return stats.get(point_of(role, n, expert, tied))

            out[n] = search_layer(folds, weights, scheme, point, grid)
            progress.advance(weights.nbytes, f"layer {n}")
            del weights
    finally:
        progress.finish()
    return out


def calibrated_source(source: Any, backend: Any, options: Any, progress: Progress | None = None) -> Any:
    """``source`` itself for a data-free recipe, else the :class:`CalibratedSource` the recipe needs.

    Memoised per (checkpoint object, backend, options) in this process, so export and every
    ``quantize`` hook call of one checkpoint share the search.
    """
    if isinstance(source, CalibratedSource):
        return source
    recipe = get_recipe(getattr(options, "recipe", None))
    if not is_calibrated(recipe):
        return source
    arch = source.config.arch
    if not arch.calibrates:
        raise UnsupportedPrecisionError(
            f"--recipe {options.recipe} calibrates on text, which phi-quant does not do yet for {arch.name} "
            f"({source.config.architecture}); use a data-free recipe (rtn, clip, hqq)"
        )
    progress = progress or NullProgress()
    key = (id(source), getattr(backend, "name", None), repr(options))
    hit = _PREPARED.get(key)
    if hit is not None and hit[0] is source:
        return hit[1]
    t0 = time.perf_counter()
    request = request_from_options(options)
    stats = calibration_statistics(source, request, progress)
    t_stats = time.perf_counter()
    scales: dict[int, LayerScales] = {}
    if getattr(recipe, "awq", False):
        schemes = _plan_schemes(backend, source, options)
        scales = _search(source, stats, schemes, getattr(recipe, "grid", 20), progress)
    t_awq = time.perf_counter()
    view = CalibrationView(stats, scales, bool(source.config.tie_word_embeddings))
    summary = {k: v for k, v in stats.summary().items() if k != "file"}
    summary["cache"] = str(request.cache) if request.cache is not None else None
    record = {"recipe": recipe.describe(), "statistics": summary,
              "seconds": {"statistics": round(t_stats - t0, 2), "awq_search": round(t_awq - t_stats, 2)}}
    if scales:
        reports = [r for ls in scales.values() for r in ls.report if "ratio" in r]
        if reports:
            record["awq"] = {"folds": len(reports),
                             "mean_error_ratio": round(sum(r["ratio"] for r in reports) / len(reports), 4),
                             "unscaled": sum(1 for r in reports if r["alpha"] is None)}
    wrapped = CalibratedSource(source, view, scales, record)
    _PREPARED[key] = (source, wrapped)
    while len(_PREPARED) > 8:
        _PREPARED.pop(next(iter(_PREPARED)))
    return wrapped
