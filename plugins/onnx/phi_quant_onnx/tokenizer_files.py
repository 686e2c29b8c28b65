"""Copy the tokenizer files onnxruntime-genai's tokenizer reads into the model folder.

genai tokenizes with onnxruntime-extensions, which reads the Hugging Face ``tokenizer.json`` and
``tokenizer_config.json`` (tokenizer class, special tokens, chat template). The only edit:
``model_max_length`` is set to the exported context length, because Hugging Face writes a
1e30 "no limit" there that is not a usable integer (the builder makes the same change), and a chat
template kept only in ``chat_template.jinja`` (transformers 5) is copied into it, where genai's
``apply_chat_template`` looks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping

from phi_quant.errors import CheckpointError

from .constants import TOKENIZER_FILES

__all__ = ["copy_tokenizer_files"]


def copy_tokenizer_files(
    files: Mapping[str, Path], output_dir: Path, context_length: int, chat_template: str | None = None
) -> list[str]:
    """Copy the known tokenizer files present in ``files``; return the names written."""
    if "tokenizer.json" not in files:
        raise CheckpointError(
            "the checkpoint has no tokenizer.json; onnxruntime-genai needs it. Save the tokenizer "
            "with transformers (tokenizer.save_pretrained) next to the weights and try again"
        )
    written = []
    for name in TOKENIZER_FILES:
        src = files.get(name)
        if src is None:
            continue
        dst = Path(output_dir) / name
        if name == "tokenizer_config.json":
            data = json.loads(Path(src).read_text(encoding="utf-8"))
            data["model_max_length"] = int(context_length)
            if chat_template and not data.get("chat_template"):
                data["chat_template"] = chat_template
            dst.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        else:
            shutil.copyfile(src, dst)
        written.append(name)
    return written
