"""Opening a checkpoint: one object with the config, tokenizer files and a lazy tensor stream.

:func:`open_model` accepts a local Hugging Face directory or a Hub id. Everything is validated
up front from headers alone (config, index, every shard's header and each tensor's shape), so a
broken checkpoint fails before a backend has written anything. Tensor data is only touched when
a consumer calls :meth:`SourceTensor.raw`, one memory-mapped tensor at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import CheckpointError, UnsupportedModelError
from .checks import check_finite
from .config import PhiConfig, normalize_config
from .hub import resolve_model_dir
from .safetensors_io import HeaderEntry, read_header
from .tensors import FileRows, SourceTensor, TensorInfo, TensorRole, hf_name

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

_SPLITS = {
    TensorRole.QKV: (TensorRole.Q, TensorRole.K, TensorRole.V),
    TensorRole.GATE_UP: (TensorRole.GATE, TensorRole.UP),
}


def open_model(path_or_hub_id: str | os.PathLike, *, revision: str | None = None) -> "ModelSource":
    """Open a Phi3ForCausalLM-family checkpoint (local directory or Hub id) for streaming.

    Raises :class:`CheckpointError` for missing/corrupt/pickled files and
    :class:`UnsupportedModelError` for architectures phi-quant cannot convert.
    """
    return ModelSource(resolve_model_dir(path_or_hub_id, revision=revision))


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {what}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download or repair it") from e
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e


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
        raw = _read_json(path / "config.json", "not a Hugging Face checkpoint directory (no config.json)")
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path / 'config.json'} does not hold a JSON object")
        self.tokenizer_files: dict[str, Path] = {n: path / n for n in TOKENIZER_FILES if (path / n).is_file()}
        self.tokenizer_config: dict[str, Any] = (
            _read_json(path / "tokenizer_config.json", "") if "tokenizer_config.json" in self.tokenizer_files else {}
        )
        gen = path / "generation_config.json"
        self.generation_config: dict[str, Any] = _read_json(gen, "") if gen.is_file() else {}
        self.config: PhiConfig = normalize_config(raw, tokenizer_size=self._tokenizer_size())
        self._entries = self._index_tensors()
        self._infos = self._plan()

    # -- checkpoint discovery --------------------------------------------------------------------
    def _tokenizer_size(self) -> int | None:
        f = self.tokenizer_files.get("tokenizer.json")
        if f is None:
            return None
        tj = _read_json(f, "")
        try:
            ids = set(tj["model"]["vocab"].values()) if isinstance(tj["model"]["vocab"], dict) else set(
                range(len(tj["model"]["vocab"]))
            )
            ids |= {t["id"] for t in tj.get("added_tokens", [])}
        except (KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{f} has no readable model vocabulary ({e})") from e
        return max(ids) + 1 if ids else 0

    def _index_tensors(self) -> dict[str, HeaderEntry]:
        index_file = self.path / "model.safetensors.index.json"
        if index_file.is_file():
            index = _read_json(index_file, "")
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index_file} has no weight_map; re-download the checkpoint")
            shards = sorted(set(weight_map.values()))
        else:
            shards = sorted(p.name for p in self.path.glob("*.safetensors"))
            weight_map = None
            if not shards:
                pickles = sorted(p.name for p in self.path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
                if pickles:
                    raise CheckpointError(_pickle_message(self.path / pickles[0]))
                raise CheckpointError(
                    f"{self.path} holds no *.safetensors weights (and no model.safetensors.index.json)."
                )
        entries: dict[str, HeaderEntry] = {}
        for shard in shards:
            f = self.path / shard
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

    def _expected_shape(self, role: TensorRole) -> tuple[int, ...]:
        c = self.config
        h, i = c.hidden_size, c.intermediate_size
        return {
            TensorRole.EMBED: (c.vocab_size, h),
            TensorRole.ATTN_NORM: (h,),
            TensorRole.QKV: (c.qkv_rows, h),
            TensorRole.O: (h, c.q_size),
            TensorRole.FFN_NORM: (h,),
            TensorRole.GATE_UP: (2 * i, h),
            TensorRole.DOWN: (h, i),
            TensorRole.FINAL_NORM: (h,),
            TensorRole.LM_HEAD: (c.vocab_size, h),
        }[role]

    def _plan(self) -> list[TensorInfo]:
        """The fused stream in canonical order, each tensor checked against the config."""
        c = self.config
        roles: list[tuple[TensorRole, int | None]] = [(TensorRole.EMBED, None)]
        for n in range(c.num_layers):
            roles += [(r, n) for r in (TensorRole.ATTN_NORM, TensorRole.QKV, TensorRole.O, TensorRole.FFN_NORM,
                                       TensorRole.GATE_UP, TensorRole.DOWN)]
        roles.append((TensorRole.FINAL_NORM, None))
        if not c.tie_word_embeddings:
            roles.append((TensorRole.LM_HEAD, None))
        if any(".q_proj." in n or ".gate_proj." in n for n in self._entries) and not any(
            ".qkv_proj." in n for n in self._entries
        ):
            raise UnsupportedModelError(
                "this checkpoint stores separate q/k/v (or gate/up) projections: it is not in the Phi3ForCausalLM "
                "layout (fused qkv_proj and gate_up_proj)"
            )
        infos = []
        for role, layer in roles:
            name = hf_name(role, layer)
            e = self._entries.get(name)
            if e is None:
                hint = " (config says tie_word_embeddings=false)" if role is TensorRole.LM_HEAD else ""
                raise CheckpointError(f"tensor {name} is missing from the checkpoint{hint}; re-download it")
            if e.dtype not in ("f32", "f16", "bf16"):
                raise CheckpointError(
                    f"tensor {name} is stored as {e.dtype}; phi-quant reads F32, F16 and BF16 weights. Use the "
                    "unquantized checkpoint of this model (an fp8/int checkpoint must be dequantized first)."
                )
            want = self._expected_shape(role)
            if e.shape != want:
                raise CheckpointError(
                    f"tensor {name} has shape {list(e.shape)} but config.json implies {list(want)}; "
                    "config.json and the weights do not belong together"
                )
            infos.append(TensorInfo(name, role, layer, e.dtype, e.shape))
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
        """Every tensor of the stream, in canonical order, without reading data."""
        if not split:
            return list(self._infos)
        out = []
        for info in self._infos:
            if info.role in _SPLITS:
                out += [t.info() for t in self._split(info)]
            else:
                out.append(info)
        return out

    def tensors(self, split: bool = False) -> Iterator[SourceTensor]:
        """Lazy tensors in canonical order; ``split`` yields q/k/v and gate/up as row-slice views."""
        for info in self._infos:
            if split and info.role in _SPLITS:
                yield from self._split(info)
            else:
                yield self._tensor(info)

    def tensor(self, role: TensorRole | str, layer: int | None = None) -> SourceTensor:
        """One tensor by role (fused or split) and layer."""
        role = TensorRole(role)
        for info in self._infos:
            if info.layer == layer and info.role is role:
                return self._tensor(info)
            if info.layer == layer and role in _SPLITS.get(info.role, ()):
                return next(t for t in self._split(info) if t.role is role)
        raise KeyError(f"no tensor with role {role.value} and layer {layer}")

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
        name = info.name if role is None else hf_name(role, info.layer)
        return SourceTensor(name, role or info.role, info.layer, info.dtype, shape,
                            _loader=FileRows(e.path, offset, info.dtype, shape))

    def _split(self, info: TensorInfo) -> list[SourceTensor]:
        c = self.config
        if info.role is TensorRole.QKV:
            bounds = [0, c.q_size, c.q_size + c.kv_size, c.qkv_rows]
        else:
            bounds = [0, c.intermediate_size, 2 * c.intermediate_size]
        return [self._tensor(info, (bounds[k], bounds[k + 1]), r) for k, r in enumerate(_SPLITS[info.role])]


def _pickle_message(path: Path) -> str:
    return (
        f"{path.name} is a pickled PyTorch checkpoint; phi-quant never unpickles files (unpickling can run "
        "arbitrary code). Use the safetensors weights of this model, or convert it once in a trusted "
        "environment (transformers: model.save_pretrained(dir, safe_serialization=True))."
    )
