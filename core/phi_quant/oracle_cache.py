"""The fp32 oracle of one checkpoint, with what it computed kept on disk.

The numpy oracle is the slow half of every measurement on a real model (about 14 CPU-s per
512-token window of the 135M ``real:smollm2``), and it gives the same answer every time for the
same weights and token ids. ``compare`` evaluates a dozen exports of one model, the fidelity bench
several dozen, the tests a few per backend: each would pay it again. :class:`OracleCache` runs the
oracle only for token sequences it has not seen and keeps the result under
``user_cache_dir()/oracle/numpy-<model key>/``.

The model key covers what the logits depend on: the oracle's own source files (``phi_quant/arch``),
numpy's version, the checkpoint's ``config.json`` and, for each weights file, its name, size,
modification time and safetensors header. Hashing the weights themselves would cost more than the
oracle for a large model; a rebuilt or edited checkpoint changes its files' times, so it gets a new
key. Entries are written to a temporary file and renamed, so concurrent processes never read half
of one. The cache can be deleted at any time; ``PHI_QUANT_NO_ORACLE_CACHE=1`` turns it off.

Sizes: one entry holds ``[tokens, vocab]`` float32 logits, about 100 MB for 512 tokens of a
49k-token vocabulary (``eval`` on a ``real:`` model keeps about 420 MB per model and text).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .cache import user_cache_dir

__all__ = ["OracleCache", "model_key", "NO_CACHE_ENV"]

#: Set to 1 to run the oracle afresh every time (nothing read from or written to the cache).
NO_CACHE_ENV = "PHI_QUANT_NO_ORACLE_CACHE"
#: Bump when what an entry means changes in a way the key cannot see.
CACHE_VERSION = "1"
_ARCH_DIR = Path(__file__).parent / "arch"


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return head
        (n,) = struct.unpack("<Q", head)
        return head + f.read(min(n, 100 << 20))


def model_key(source: Any) -> str:
    """A short key for the oracle's results on ``source`` (see the module docstring for what it covers)."""
    h = hashlib.sha256(f"phi-quant oracle cache {CACHE_VERSION}; numpy {np.__version__}\n".encode())
    for f in sorted(_ARCH_DIR.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    root = Path(source.path)
    h.update((root / "config.json").read_bytes())
    for w in sorted(root.glob("*.safetensors")):
        st = w.stat()
        h.update(f"{w.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        h.update(_safetensors_header(w))
    return h.hexdigest()[:24]


def _ids_key(kind: str, ids: Sequence[int], extra: Any = None) -> str:
    h = hashlib.sha256(kind.encode() + b"\0" + np.asarray(list(ids), dtype=np.int64).tobytes())
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True).encode())
    return f"{kind}-{len(ids)}-{h.hexdigest()[:32]}"


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class OracleCache:
    """``logits(ids)`` and ``greedy(ids, n)`` of the fp32 oracle of ``source``, computed once per sequence.

    The oracle itself (:class:`phi_quant.reference.ReferenceModel`, every weight as float32) is
    only built on the first sequence the cache does not hold. ``hits`` and ``misses`` count lookups.
    """

    def __init__(self, source: Any, root: Path | None = None):
        self.source = source
        self.enabled = os.environ.get(NO_CACHE_ENV, "") in ("", "0")
        self.key = model_key(source)
        self.dir = (Path(root) if root is not None else user_cache_dir() / "oracle") / f"numpy-{self.key}"
        self._model = None
        self.hits = 0
        self.misses = 0

    @property
    def model(self):
        """The oracle, built on first use."""
        if self._model is None:
            from .reference import ReferenceModel

            self._model = ReferenceModel.from_source(self.source)
        return self._model

    def close(self) -> None:
        """Drop the oracle's weights (the cache on disk stays)."""
        self._model = None

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 ``[len(ids), vocab]`` next-token logits, exactly :meth:`ReferenceModel.logits`."""
        ids = [int(i) for i in ids]
        path = self.dir / (_ids_key("logits", ids) + ".npy")
        if self.enabled and path.is_file():
            try:
                out = np.load(path)
                if out.shape[0] == len(ids):
                    self.hits += 1
                    return out
            except (OSError, ValueError):
                pass  # a damaged entry is recomputed and replaced
        self.misses += 1
        out = np.asarray(self.model.logits(ids), dtype=np.float32)
        if self.enabled:
            _write_atomic(path, lambda f: np.save(f, out))
        return out

    def greedy(self, ids: Sequence[int], max_new_tokens: int, eos_ids: Iterable[int] = (),
               proposal: Sequence[int] = ()) -> list[int]:
        """The oracle's greedy continuation of ``ids``: new ids only, an end token included last.

        ``proposal`` (say, the export's own answer) only saves time: one oracle pass over ``ids`` +
        proposal yields the oracle's argmax after every prefix, so the proposal is kept up to its first
        token the oracle would not pick, that token is the oracle's, and greedy steps (a full pass
        each, as :meth:`ReferenceModel.generate` does) continue from there. The answer is the oracle's
        either way, and is cached under ``ids`` alone.
        """
        ids = [int(i) for i in ids]
        stop = sorted(int(e) for e in eos_ids)
        path = self.dir / (_ids_key("greedy", ids, {"new": int(max_new_tokens), "eos": stop}) + ".json")
        if self.enabled and path.is_file():
            try:
                out = json.loads(path.read_text())
                self.hits += 1
                return [int(t) for t in out]
            except (OSError, ValueError):
                pass
        self.misses += 1
        out = self._greedy(ids, int(max_new_tokens), set(stop), [int(t) for t in proposal])
        if self.enabled:
            _write_atomic(path, lambda f: f.write(json.dumps(out).encode()))
        return out

    def _greedy(self, ids: list[int], max_new: int, stop: set[int], proposal: list[int]) -> list[int]:
        new: list[int] = []
        while len(new) < max_new:
            guess = proposal[len(new):max_new - 1] if proposal[:len(new)] == new else []
            logits = self.model.logits(ids + new + guess)
            first = len(ids) + len(new) - 1  # the row that predicts the next new token
            for j in range(len(guess) + 1):
                token = int(np.argmax(logits[first + j]))
                new.append(token)
                if token in stop or len(new) == max_new:
                    return new
                if j < len(guess) and token != guess[j]:
                    break  # the rows after this one saw the proposal's token, not the oracle's
        return new
