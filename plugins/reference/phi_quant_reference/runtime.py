"""Run an exported directory: decode every tensor to float32 and hand them to the numpy oracle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from safetensors.numpy import load_file

from phi_quant.errors import RuntimeLoadError
from phi_quant.model.config import normalize_config

from .weights import decode

__all__ = ["INDEX_NAME", "ReferenceModelRunner"]

INDEX_NAME = "reference.json"


class ReferenceModelRunner:
    """A :class:`phi_quant.types.LoadedModel` over the core's fp32 oracle."""

    def __init__(self, path: str | Path):
        from phi_quant.reference import ReferenceModel
        from tokenizers import Tokenizer

        self.path = Path(path)
        if not (self.path / INDEX_NAME).is_file():
            raise RuntimeLoadError(f"{self.path} has no {INDEX_NAME}; export it again with phi-quant quantize")
        index = json.loads((self.path / INDEX_NAME).read_text())
        self.config = normalize_config(json.loads((self.path / "config.json").read_text()))
        weights = {
            name: decode(load_file(str(self.path / entry["file"])), entry["scheme"], tuple(entry["shape"]))
            for name, entry in index["tensors"].items()
        }
        self.model = ReferenceModel(self.config, weights=weights)
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        tok_config = self.path / "tokenizer_config.json"
        self.tokenizer_config = json.loads(tok_config.read_text()) if tok_config.is_file() else {}

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        return np.asarray(self.model.logits(list(ids)), dtype=np.float32)

    def render_chat(self, prompt: str) -> str:
        """``prompt`` as one user turn in the model's own chat template."""
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        template = self.tokenizer_config.get("chat_template")
        if not template:
            raise RuntimeLoadError(f"{self.path.name} has no chat template; run without chat mode")
        return ImmutableSandboxedEnvironment().from_string(template).render(
            messages=[{"role": "user", "content": prompt}], add_generation_prompt=True,
            bos_token="", eos_token=_token_text(self.tokenizer_config.get("eos_token")))

    def generate(self, prompt: str, max_new_tokens: int = 32, *, chat: bool = False) -> str:
        ids = self.tokenize(self.render_chat(prompt) if chat else prompt)
        out = self.model.generate(ids, max_new_tokens, eos_ids=list(self.config.eos_token_ids) or None)
        new = out[len(ids):] if list(out[: len(ids)]) == ids else out
        return self.detokenize([i for i in new if i not in self.config.eos_token_ids])

    def close(self) -> None:
        self.model = None


def _token_text(token: object) -> str:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict in older files."""
    if isinstance(token, dict):
        return str(token.get("content", ""))
    return str(token or "")
