"""Which files of a checkpoint directory may be read: names that stay inside it.

A checkpoint from the Hub is untrusted. Its shard index names files, and any file in the
directory may be a symbolic link; followed blindly, ``"../outside.safetensors"``, ``/etc/passwd``
or a link to a private file would be read and its bytes copied into the output. Every file the
reader opens goes through :func:`checkpoint_file`, which refuses a path that resolves (symlinks
included) outside the checkpoint. A Hugging Face cache snapshot is the one legitimate case of
links leaving the directory: its files link to ``../../blobs/`` of the same repository folder,
so that folder counts as inside.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError
from ..fields import Fields

__all__ = ["checkpoint_roots", "checkpoint_file", "read_index", "MAX_JSON_BYTES"]

#: Largest JSON side file we parse (config, index, tokenizer): a Phi-4 tokenizer.json is ~15 MB.
MAX_JSON_BYTES = 256 * 2**20


def checkpoint_roots(directory: Path) -> tuple[Path, ...]:
    """The resolved directories files of ``directory`` may live in (plus the cache repo for a Hub snapshot)."""
    root = Path(directory).resolve()
    roots = [root]
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        roots.append(root.parent.parent)  # .../models--owner--name (snapshots/<rev> link into its blobs/)
    return tuple(roots)


def checkpoint_file(directory: Path, name: str, what: str, roots: tuple[Path, ...] | None = None) -> Path:
    """``directory / name`` after checking that ``name`` and its link target stay inside the checkpoint.

    :param what: how the message names the file's origin, e.g. "model.safetensors.index.json lists".
    """
    directory = Path(directory)
    roots = roots or checkpoint_roots(directory)
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\x00" in name:
        raise CheckpointError(
            f"{what} {name!r}, a path outside the checkpoint directory {directory}; phi-quant reads only files "
            "inside the checkpoint (the file may be crafted). Remove the entry or fix the checkpoint."
        )
    path = directory / rel
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise CheckpointError(f"{what} {name!r}, which cannot be resolved ({e}); fix or remove the link") from e
    if not any(target == r or target.is_relative_to(r) for r in roots):
        raise CheckpointError(
            f"{what} {name!r}, which links to {target}, outside the checkpoint directory {directory}; phi-quant "
            "reads only files inside the checkpoint. Copy the real file into the checkpoint instead of a link."
        )
    return path


def read_json(path: Path, what: str) -> object:
    """Parse one JSON side file; every defect (missing, unreadable, not JSON, too large) is a CheckpointError."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is {size} bytes; no checkpoint JSON file is that large. Repair or remove it.")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {what}") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download or repair it") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        return json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{path} is not valid JSON (nested too deeply); re-download or repair it") from None
    except ValueError as e:  # JSONDecodeError, or an integer with too many digits
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download or repair it") from None


def read_index(path: Path, roots: tuple[Path, ...] | None = None) -> dict[str, str]:
    """The ``weight_map`` of ``model.safetensors.index.json``: tensor name -> shard file name.

    Every value must be a file name that stays inside the checkpoint directory.
    """
    path = Path(path)
    index = Fields(read_json(path, ""), str(path))
    if not index.has("weight_map"):
        raise CheckpointError(f"{path} has no weight_map; re-download the checkpoint")
    weight_map = index.mapping("weight_map", value="tensor names to shard file names")
    if not weight_map:
        raise CheckpointError(f"{path}: weight_map names no tensor; re-download the checkpoint")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise index.error(f"weight_map[{name!r}]", "a shard file name", shard)
    roots = roots or checkpoint_roots(path.parent)
    for shard in sorted(set(weight_map.values())):
        checkpoint_file(path.parent, shard, f"{path.name} lists the shard", roots)
    return dict(weight_map)
