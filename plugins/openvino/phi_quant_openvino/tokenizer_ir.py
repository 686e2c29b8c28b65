"""Tokenizer and detokenizer IRs, built by the vendor's own converter (openvino_tokenizers).

openvino_tokenizers converts a transformers tokenizer object. ``AutoTokenizer`` imports torch,
so we load the checkpoint's ``tokenizer.json`` through ``PreTrainedTokenizerFast`` directly, which
does not; the export path stays torch-free. The converter stores the chat template, the special
token ids and the detokenizer options in the IRs' rt_info, where LLMPipeline reads them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import openvino as ov

from phi_quant.errors import CheckpointError, ExportFailedError

from . import constants as C

__all__ = ["write_tokenizer_irs"]


def _load_hf_tokenizer(files: dict[str, Path], chat_template: str | None):
    from transformers import PreTrainedTokenizerFast  # does not import torch (AutoTokenizer does)

    if "tokenizer.json" not in files:
        raise CheckpointError(
            "the checkpoint has no tokenizer.json; OpenVINO tokenizer conversion needs the fast "
            "tokenizer file (save it with transformers' tokenizer.save_pretrained)"
        )
    folder = files["tokenizer.json"].parent
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    if chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = chat_template
    return tok


def write_tokenizer_irs(files: dict[str, Path], chat_template: str | None, output_dir: Path) -> list[str]:
    """Write openvino_tokenizer.xml/.bin and openvino_detokenizer.xml/.bin; return the file names."""
    from openvino_tokenizers import convert_tokenizer

    torch_before = "torch" in sys.modules
    hf = _load_hf_tokenizer(files, chat_template)
    try:
        tokenizer, detokenizer = convert_tokenizer(hf, with_detokenizer=True, skip_special_tokens=True)
    except Exception as exc:  # the converter raises many types; say which step failed
        raise ExportFailedError(f"openvino_tokenizers could not convert the tokenizer: {exc}") from exc
    if not torch_before and "torch" in sys.modules:  # pragma: no cover - guards the no-torch promise
        raise ExportFailedError("internal error: tokenizer conversion imported torch")
    ov.save_model(tokenizer, str(output_dir / C.TOKENIZER_XML))
    ov.save_model(detokenizer, str(output_dir / C.DETOKENIZER_XML))
    return [C.TOKENIZER_XML, C.TOKENIZER_BIN, C.DETOKENIZER_XML, C.DETOKENIZER_BIN]
