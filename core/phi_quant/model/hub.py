"""Resolving a model argument to a local directory: a path, or a Hugging Face Hub id to download.

Only what conversion needs is fetched (configs, safetensors, tokenizer files): never pickled
``.bin`` weights. ``HF_HOME`` and ``HF_HUB_OFFLINE`` are honoured by huggingface_hub itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointError

__all__ = ["ALLOW_PATTERNS", "looks_like_hub_id", "resolve_model_dir"]

#: Files downloaded from the Hub: configs, weights, tokenizer (SentencePiece and byte-level).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt", "*.tiktoken"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` with Hub-legal characters (a relative path with one slash looks the same)."""
    return bool(_HUB_ID.match(name)) and ".." not in name


def resolve_model_dir(model: str | os.PathLike, *, revision: str | None = None) -> Path:
    """Return a local directory holding the checkpoint, downloading from the Hub when needed."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    name = str(model)
    if not looks_like_hub_id(name):
        raise CheckpointError(f"{name} does not exist. Pass a local checkpoint directory or a Hub id like microsoft/Phi-4-mini-instruct.")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub is a core dependency
        raise CheckpointError(f"{name} is not a local directory and huggingface_hub is not installed") from e
    how = (
        "Download it on a machine with access (huggingface-cli download "
        f"{name} --local-dir DIR) and pass that local directory instead."
    )
    try:
        local = snapshot_download(repo_id=name, revision=revision, allow_patterns=ALLOW_PATTERNS)
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"cannot fetch {name} from the Hugging Face Hub (offline, unreachable, or HF_HUB_OFFLINE=1 with no "
            f"cached copy). {how}"
        ) from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(f"{name} is not a model on the Hugging Face Hub (or it is gated/private). {how}") from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(f"downloading {name} from the Hugging Face Hub failed: {e}. {how}") from e
    return Path(local)
