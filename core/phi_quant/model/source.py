"""Opening a checkpoint: one object with the config, tokenizer files and a lazy tensor stream.

:func:`open_model` accepts a local Hugging Face directory or a Hub id. Everything is validated
up front from headers alone (config, index, every shard's header and each tensor's shape), so a
broken checkpoint fails before a backend has written anything. Tensor data is only touched when
a consumer calls :meth:`SourceTensor.raw`, one memory-mapped tensor at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import CheckpointError
from .checks import check_finite
from .config import PhiConfig, normalize_config
from .checkpoint_files import checkpoint_file, checkpoint_roots, read_index, read_json
from .hub import resolve_model_dir
from .safetensors_io import HeaderEntry, read_header
from .tensor_check import check_layer_count, check_no_unexpected
from .tensors import FileRows, SourceTensor, TensorInfo, TensorRole
from .tokenizer_check import (
    TokenizerIds,
    check_generation_config,
    check_ids_fit,
    check_template_file,
    check_tokenizer_config,
    check_tokenizer_json,
)

__all__ = ["open_model", "ModelSource", "TOKENIZER_FILES", "check_finite"]

#: Tokenizer files a backend may need, in the order they are looked for.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def open_model(path_or_hub_id: str | os.PathLike, *, revision: str | None = None) -> "ModelSource":
    """Open a checkpoint of an architecture phi-quant reads (local directory or Hub id) for streaming.

    Raises :class:`CheckpointError` for missing/corrupt/pickled files and
    :class:`UnsupportedModelError` for architectures phi-quant cannot convert.
    """
    return ModelSource(resolve_model_dir(path_or_hub_id, revision=revision))


def _read_json(path: Path, what: str) -> Any:
    return read_json(path, what)


class ModelSource:
    """A validated checkpoint directory. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if path.is_file():
            if path.suffix in _PICKLE_SUFFIXES:
                raise CheckpointError(_pickle_message(path))
            raise CheckpointError(f"{path} is a file; pass the checkpoint directory that holds config.json")
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a directory; pass a Hugging Face checkpoint directory")
        self.path = path
        self._roots = checkpoint_roots(path)
        config_file = self._file("config.json")
        raw = _read_json(config_file, "not a Hugging Face checkpoint directory (no config.json)")
        if not isinstance(raw, dict):
            raise CheckpointError(f"{config_file} does not hold a JSON object")
        self.tokenizer_files: dict[str, Path] = {
            n: self._file(n) for n in TOKENIZER_FILES if (path / n).is_file() or (path / n).is_symlink()
        }
        self.tokenizer_config: dict[str, Any] = {}
        if "tokenizer_config.json" in self.tokenizer_files:
            f = self.tokenizer_files["tokenizer_config.json"]
            self.tokenizer_config = check_tokenizer_config(_read_json(f, ""), str(f))
        if "chat_template.json" in self.tokenizer_files:
            f = self.tokenizer_files["chat_template.json"]
            check_template_file(_read_json(f, ""), str(f))
        token_ids = self._tokenizer_ids()
        self.config: PhiConfig = normalize_config(raw, tokenizer_size=token_ids.size if token_ids else None,
                                                  file=str(config_file))
        if token_ids is not None:
            check_ids_fit(token_ids, str(self.tokenizer_files["tokenizer.json"]), self.config.vocab_size)
        gen = path / "generation_config.json"
        self.generation_config: dict[str, Any] = {}
        if gen.is_file() or gen.is_symlink():
            gen = self._file("generation_config.json")
            self.generation_config = check_generation_config(_read_json(gen, ""), str(gen), self.config.vocab_size)
        self.arch = self.config.arch
        self._splits = self.arch.splits(self.config)
        self._entries = self._index_tensors()
        check_layer_count(self._entries, self.config.num_layers, str(config_file))  # before planning any layer
        self._infos = self._plan()
        tied_copy = (self.arch.hf_name(TensorRole.LM_HEAD),) if self.config.tie_word_embeddings else ()  # ignored
        check_no_unexpected(self._entries, [*(i.name for i in self._infos), *tied_copy], self.config.architecture)

    def _file(self, name: str, origin: str = "the checkpoint holds") -> Path:
        """``self.path / name``, refused when it (or its link target) lies outside the checkpoint."""
        return checkpoint_file(self.path, name, origin, self._roots)

    # -- checkpoint discovery --------------------------------------------------------------------
    def _tokenizer_ids(self) -> TokenizerIds | None:
        f = self.tokenizer_files.get("tokenizer.json")
        return None if f is None else check_tokenizer_json(_read_json(f, ""), str(f))

    def _index_tensors(self) -> dict[str, HeaderEntry]:
        index_file = self.path / "model.safetensors.index.json"
        if index_file.is_file() or index_file.is_symlink():
            weight_map = read_index(self._file(index_file.name), self._roots)
            shards = sorted(set(weight_map.values()))
        else:
            weight_map = None
            shards = sorted(self._file(p.name).name for p in self.path.glob("*.safetensors"))
            if not shards:
                pickles = sorted(p.name for p in self.path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
                if pickles:
                    raise CheckpointError(_pickle_message(self.path / pickles[0]))
                raise CheckpointError(
                    f"{self.path} holds no *.safetensors weights (and no model.safetensors.index.json)."
                )
        entries: dict[str, HeaderEntry] = {}
        for shard in shards:
            f = self._file(shard, "model.safetensors.index.json lists the shard")
            if not f.is_file():
                raise CheckpointError(
                    f"shard {shard} listed in model.safetensors.index.json is missing from {self.path}; "
                    "the download is incomplete: fetch it again"
                )
            for name, entry in read_header(f).entries.items():
                if weight_map is not None and weight_map.get(name) != shard:
                    continue
                if name in entries:
                    raise CheckpointError(
                        f"tensor {name} is stored twice ({entries[name].path.name} and {shard}) and there is no "
                        "model.safetensors.index.json to say which one counts; remove the stray file"
                    )
                entries[name] = entry
        if weight_map is not None:
            missing = sorted(n for n in weight_map if n not in entries)
            if missing:
                raise CheckpointError(
                    f"model.safetensors.index.json lists {len(missing)} tensor(s) not found in their shards "
                    f"(first: {missing[0]} in {weight_map[missing[0]]}); the checkpoint is inconsistent: re-download it"
                )
        return entries

    def _plan(self) -> list[TensorInfo]:
        """The architecture's stream in its order, each tensor checked against the config."""
        self.arch.check_layout(self._entries)
        infos = []
        for spec in self.arch.stream_plan(self.config):
            name = spec.name
            e = self._entries.get(name)
            if e is None:
                hint = " (config says tie_word_embeddings=false)" if spec.role is TensorRole.LM_HEAD else ""
                raise CheckpointError(f"tensor {name} is missing from the checkpoint{hint}; re-download it")
            if e.dtype not in ("f32", "f16", "bf16"):
                raise CheckpointError(
                    f"tensor {name} is stored as {e.dtype}; phi-quant reads F32, F16 and BF16 weights. Use the "
                    "unquantized checkpoint of this model (an fp8/int checkpoint must be dequantized first)."
                )
            want = spec.shape
            if e.shape != want:
                raise CheckpointError(
                    f"tensor {name} has shape {list(e.shape)} but config.json implies {list(want)}; "
                    "config.json and the weights do not belong together"
                )
            infos.append(TensorInfo(name, spec.role, spec.layer, e.dtype, e.shape, expert=spec.expert))
        return infos

    # -- the public API ---------------------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        t = self.tokenizer_config.get("chat_template")
        if isinstance(t, list):  # named templates: take the default one
            t = next((x.get("template") for x in t if x.get("name") == "default"), None)
        if t:
            return t
        if "chat_template.jinja" in self.tokenizer_files:
            return self.tokenizer_files["chat_template.jinja"].read_text(encoding="utf-8")
        if "chat_template.json" in self.tokenizer_files:
            return _read_json(self.tokenizer_files["chat_template.json"], "").get("chat_template")
        return None

    def hf_tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` of ``tokenizer.json`` (the ground truth for token ids)."""
        from tokenizers import Tokenizer

        f = self.tokenizer_files.get("tokenizer.json")
        if f is None:
            raise CheckpointError(f"{self.path} has no tokenizer.json; phi-quant needs the fast tokenizer file")
        try:
            return Tokenizer.from_file(str(f))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise CheckpointError(f"{f} cannot be loaded by the tokenizers library: {e}") from e

    def tensor_infos(self, split: bool = False) -> list[TensorInfo]:
        """Every tensor of the stream, in the architecture's order, without reading data."""
        if not split:
            return list(self._infos)
        out = []
        for info in self._infos:
            if info.role in self._splits:
                out += [t.info() for t in self._split(info)]
            else:
                out.append(info)
        return out

    def tensors(self, split: bool = False) -> Iterator[SourceTensor]:
        """Lazy tensors in the architecture's stream order (``config.arch.stream_plan``); ``split``
        yields the parts of fused tensors (phi3: q/k/v and gate/up) as row-slice views."""
        for info in self._infos:
            if split and info.role in self._splits:
                yield from self._split(info)
            else:
                yield self._tensor(info)

    def tensor(self, role: TensorRole | str, layer: int | None = None, expert: int | None = None) -> SourceTensor:
        """One tensor by role (fused or split), layer and expert."""
        role = TensorRole(role)
        for info in self._infos:
            if info.layer != layer or info.expert != expert:
                continue
            if info.role is role:
                return self._tensor(info)
            if any(p.role is role for p in self._splits.get(info.role, ())):
                return next(t for t in self._split(info) if t.role is role)
        where = f" and expert {expert}" if expert is not None else ""
        raise KeyError(f"no tensor with role {role.value} and layer {layer}{where}")

    @property
    def total_bytes(self) -> int:
        """Bytes of the (fused) tensor stream, for progress bars."""
        return sum(i.nbytes for i in self._infos)

    def check_finite(self, tensor: SourceTensor) -> None:
        check_finite(tensor)

    def close(self) -> None:
        """Nothing stays mapped between ``raw()`` calls; kept for symmetry and future resources."""

    def __enter__(self) -> "ModelSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelSource({str(self.path)!r}, {self.config.family}, {len(self._infos)} tensors)"

    # -- tensor handles ---------------------------------------------------------------------------
    def _tensor(self, info: TensorInfo, rows: tuple[int, int] | None = None, role: TensorRole | None = None) -> SourceTensor:
        e = self._entries[info.name]
        start, stop = rows if rows else (0, info.shape[0])
        shape = (stop - start, *info.shape[1:])
        row_bytes = e.nbytes // info.shape[0] if info.shape[0] else 0
        offset = e.offset + start * row_bytes
        name = info.name if role is None else self.arch.hf_name(role, info.layer, info.expert)
        return SourceTensor(name, role or info.role, info.layer, info.dtype, shape,
                            _loader=FileRows(e.path, offset, info.dtype, shape), expert=info.expert)

    def _split(self, info: TensorInfo) -> list[SourceTensor]:
        return [self._tensor(info, (p.start, p.stop), p.role) for p in self._splits[info.role]]


def _pickle_message(path: Path) -> str:
    return (
        f"{path.name} is a pickled PyTorch checkpoint; phi-quant never unpickles files (unpickling can run "
        "arbitrary code). Use the safetensors weights of this model, or convert it once in a trusted "
        "environment (transformers: model.save_pretrained(dir, safe_serialization=True))."
    )
