"""What a calibration is made of: the text, how many of its tokens, in which windows, and for which model.

The statistics depend on exactly these and nothing else (never on the backend or the recipe), so
they are computed once and keyed by them: :meth:`CalibrationRequest.key` covers the model's
fingerprint, the text's sha256, the token count, the window and :data:`~.stats.STATS_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..texts import SourceText, calibration_text, text_from_file
from .stats import STATS_VERSION
from .synthetic import SyntheticText, is_synthetic, synthetic_text

__all__ = ["DEFAULT_TOKENS", "DEFAULT_WINDOW", "MIN_TOKENS", "CalibrationRequest", "model_fingerprint",
           "request_from_options"]

#: Calibration tokens by default: 4 windows of 512 (about 1 minute of the numpy oracle for a 135M model).
DEFAULT_TOKENS = 2048
#: Tokens per sequence; each window runs alone from position 0, as ``eval`` scores its text.
DEFAULT_WINDOW = 512
#: Fewer tokens than this cannot estimate per-channel statistics.
MIN_TOKENS = 16
_SAMPLE = 64 << 10  # bytes of each shard sampled into the fingerprint, at 4 places


def model_fingerprint(source: Any) -> dict[str, Any]:
    """What identifies a checkpoint's weights cheaply: config.json, every shard's header and size, and
    four 64 KiB samples of its data (reading whole multi-GB files to key a cache would cost more than
    calibrating small models). Any re-save that changes a value's bytes at a sampled spot or the
    layout changes the digest."""
    root = Path(source.path)
    h = hashlib.sha256()
    h.update((root / "config.json").read_bytes())
    for shard in sorted(root.glob("*.safetensors")):
        size = shard.stat().st_size
        h.update(f"{shard.name}:{size};".encode())
        with open(shard, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            h.update(f.read(min(n, 100 << 20)))
            for frac in (0.0, 0.33, 0.66, 1.0):
                f.seek(max(8 + n, int(size * frac) - _SAMPLE))
                h.update(f.read(_SAMPLE))
    return {"path": str(root), "sha256": h.hexdigest()}


@dataclass(frozen=True)
class CalibrationRequest:
    """The calibration text, the number of its tokens to use, the window and where to keep the statistics."""

    text: SourceText
    tokens: int = DEFAULT_TOKENS
    window: int = DEFAULT_WINDOW
    cache: Path | None = None

    def sequences(self, tokenizer: Any) -> list[list[int]]:
        """The first ``tokens`` token ids of the text in windows of ``window``; refuses a text too short."""
        if isinstance(self.text, SyntheticText):
            ids = self.text.token_ids(tokenizer, self.tokens)
        else:
            ids = tokenizer.encode(self.text.text, add_special_tokens=False).ids[: self.tokens]
        if len(ids) < MIN_TOKENS:
            raise BadInputError(f"the calibration text ({self.text.name}, {len(self.text.text)} characters) gives "
                                f"{len(ids)} tokens; calibration needs at least {MIN_TOKENS}: pass a longer --calibration FILE")
        return [ids[i : i + self.window] for i in range(0, len(ids), self.window)]

    def key(self, fingerprint: dict[str, Any], tokens_used: int) -> str:
        blob = json.dumps({"version": STATS_VERSION, "model": fingerprint["sha256"], "text": self.text.sha256,
                           "tokens": tokens_used, "window": self.window}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


def request_from_options(options: Any) -> CalibrationRequest:
    """The request ``ExportOptions`` describe (``calibration``, ``calibration_tokens``, ``calibration_cache``).

    ``calibration`` is a text file, the word ``synthetic`` (ids drawn from the vocabulary, no data:
    :mod:`.synthetic`) or None (phi-quant's calibration text)."""
    path = getattr(options, "calibration", None)
    if is_synthetic(path):
        text: SourceText = synthetic_text()
    else:
        text = text_from_file(path) if path else calibration_text()
    tokens = getattr(options, "calibration_tokens", None) or DEFAULT_TOKENS
    if tokens < MIN_TOKENS:
        raise BadInputError(f"--calibration-tokens must be at least {MIN_TOKENS}, got {tokens}")
    cache = getattr(options, "calibration_cache", None)
    return CalibrationRequest(text, int(tokens), DEFAULT_WINDOW, Path(cache).expanduser() if cache else None)
