"""``phi-quant.json``: the record of how an output directory was made.

Written by ``convert`` next to the backend's files, read back by ``run`` and ``eval`` to know
which backend opens the directory. It pins what a rebuild would need: the source (path or hub
id, sha256 of its config/index/tokenizer files, size of its weights), every option, the scheme
actually used, and the versions of phi-quant, the plugin and the vendor packages it depends on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import re
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .errors import BadInputError

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "OWN_FILES",
    "model_bytes",
    "file_sha256",
    "source_record",
    "tool_versions",
    "build_manifest",
    "manifest_text",
    "write_manifest",
    "read_manifest",
]

MANIFEST_NAME = "phi-quant.json"
MANIFEST_VERSION = 2  # 2: "outputs" records size and sha256 of every file (phi-quant verify)
#: What phi-quant adds to every output besides the model's own files.
OWN_FILES = (MANIFEST_NAME, "README.md")


def model_bytes(path: Path) -> int:
    """Bytes of the exported model's files: everything under ``path`` but phi-quant's manifest and card."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*")
               if f.is_file() and not (f.parent == path and f.name in OWN_FILES))


_SOURCE_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # reads into one reused buffer


def source_record(model: str, source: Any) -> dict[str, Any]:
    """Where the checkpoint came from and fingerprints of its small files (weights: size only)."""
    root = Path(source.path)
    files: dict[str, dict[str, Any]] = {}
    names = [n for n in _SOURCE_FILES if (root / n).is_file()]
    tok = getattr(source, "tokenizer_files", {}) or {}
    names += [Path(p).name for p in tok.values() if Path(p).name not in names]
    for n in names:
        p = root / n
        if p.is_file():
            files[n] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    weights = sorted(root.glob("*.safetensors"))
    cfg = source.config
    local = Path(str(model)).expanduser().exists() or str(model).startswith("tiny:")  # tiny: is built locally
    return {
        "model": str(model),
        "path": str(root.resolve()),
        "hub_id": None if local else (getattr(source, "hub_id", None) or str(model)),
        "revision": getattr(source, "revision", None),
        "family": cfg.family,
        "architecture": cfg.architecture,
        "parameters": cfg.parameter_count(),
        "files": files,
        "weights_files": [w.name for w in weights],
        "weights_bytes": int(getattr(source, "total_bytes", 0) or sum(w.stat().st_size for w in weights)),
    }


def _requirement_names(distribution: str) -> list[str]:
    try:
        reqs = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return []
    names = []
    for r in reqs:
        if "extra ==" in r:
            continue  # test/dev extras are not what the output was made with
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)", r)
        if m and m.group(1).lower() not in ("phi-quant", "phi_quant"):
            names.append(m.group(1))
    return names


def tool_versions(plugin_distribution: str = "") -> dict[str, Any]:
    """phi-quant, plugin and vendor package versions, Python and platform."""
    packages: dict[str, str] = {}
    for name in _requirement_names(plugin_distribution) if plugin_distribution else []:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    plugin_version = ""
    if plugin_distribution:
        try:
            plugin_version = metadata.version(plugin_distribution)
        except metadata.PackageNotFoundError:
            plugin_version = ""
    return {
        "phi-quant": __version__,
        "plugin": {"distribution": plugin_distribution, "version": plugin_version},
        "packages": packages,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    return str(value)


def build_manifest(
    *,
    source: dict[str, Any],
    backend_info: Any,
    options: Any,
    result: Any,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Assemble the manifest dict (JSON-ready)."""
    return _jsonable({
        "manifest_version": MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "backend": {
            "name": backend_info.name,
            "distribution": backend_info.distribution,
            "version": backend_info.version,
            "format": backend_info.format,
            "runtime": backend_info.runtime,
            "hook_contract": backend_info.hook_contract,
        },
        "precision": options.precision,
        "scheme": result.scheme,
        "options": options,
        "files": sorted(result.files),
        "quantization": getattr(result, "quantization", None),
        "details": result.details,
        "notes": result.notes,
        "tools": tool_versions(backend_info.distribution),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    })


def manifest_text(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=False) + "\n"


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = Path(directory) / MANIFEST_NAME
    path.write_text(manifest_text(manifest), encoding="utf-8")
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of an output directory, or a :class:`BadInputError` saying what is wrong."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise BadInputError(f"{directory} is not a directory; pass the output directory of 'phi-quant quantize'")
    if not path.is_file():
        raise BadInputError(
            f"{directory} has no {MANIFEST_NAME}; it was not written by 'phi-quant quantize' "
            f"(convert the model with phi-quant first)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path} is unreadable ({exc}); re-run 'phi-quant quantize' with --force") from exc
    if not isinstance(data, dict) or "backend" not in data or "name" not in data.get("backend", {}):
        raise BadInputError(f"{path} does not name a backend; re-run 'phi-quant quantize' with --force")
    return data
