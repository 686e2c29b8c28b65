"""Tokenizer and detokenizer IRs, as the vendor's converter (openvino_tokenizers) writes them.

Two routes give the same bytes. The **native** route (:mod:`.tokenizer_json` reads the files,
:mod:`.tokenizer_native` builds openvino_tokenizers' pipeline steps from them) never imports
transformers, which costs 0.5-1.5 CPU-s per conversion, and skips the converter's save-and-reload of
``tokenizer.json`` (19 MB for Phi-4). The **vendor** route loads the files through
``transformers.PreTrainedTokenizerFast`` (``AutoTokenizer`` would import torch) and calls
``convert_tokenizer``; it is taken whenever the native reader meets something it does not
translate. Either way the IRs' rt_info carries the chat template, the special token ids and the
detokenizer options LLMPipeline reads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import openvino as ov

from phi_quant.errors import CheckpointError, ExportFailedError

from . import constants as C

__all__ = ["write_tokenizer_irs", "tokenizer_models", "native_models", "vendor_models", "native_route_enabled",
           "NATIVE_VENDOR_VERSIONS"]

#: openvino_tokenizers releases (major.minor) whose output the native route was checked against
#: byte for byte; under any other release the vendor route runs.
NATIVE_VENDOR_VERSIONS = ("2026.4",)


def _require_tokenizer_json(files: dict[str, Path]) -> None:
    if "tokenizer.json" not in files:
        raise CheckpointError(
            "the checkpoint has no tokenizer.json; OpenVINO tokenizer conversion needs the fast "
            "tokenizer file (save it with transformers' tokenizer.save_pretrained)"
        )


def native_route_enabled() -> bool:
    """Whether the installed openvino_tokenizers is one the native route reproduces."""
    from openvino_tokenizers import __version__

    return ".".join(__version__.split(".")[:2]) in NATIVE_VENDOR_VERSIONS


def native_models(files: dict[str, Path], chat_template: str | None) -> tuple[ov.Model, ov.Model]:
    """(tokenizer, detokenizer) built without transformers.

    :raises phi_quant_openvino.tokenizer_json.Untranslatable: when the files need the vendor route.
    """
    from .tokenizer_json import read_tokenizer
    from .tokenizer_native import build_models

    _require_tokenizer_json(files)
    return build_models(read_tokenizer(files, chat_template))


def vendor_models(files: dict[str, Path], chat_template: str | None) -> tuple[ov.Model, ov.Model]:
    """(tokenizer, detokenizer) from transformers' tokenizer object and ``convert_tokenizer``."""
    from openvino_tokenizers import convert_tokenizer
    from transformers import PreTrainedTokenizerFast  # does not import torch (AutoTokenizer does)

    from .tokenizer_native import CONVERSION_OPTIONS

    _require_tokenizer_json(files)
    hf = PreTrainedTokenizerFast.from_pretrained(str(files["tokenizer.json"].parent))
    if chat_template and not getattr(hf, "chat_template", None):
        hf.chat_template = chat_template
    return convert_tokenizer(hf, **CONVERSION_OPTIONS)


def tokenizer_models(files: dict[str, Path], chat_template: str | None) -> tuple[ov.Model, ov.Model, str]:
    """(tokenizer, detokenizer, route): the native route where it applies, else the vendor's."""
    if native_route_enabled():
        try:
            return (*native_models(files, chat_template), "native")
        except Exception:  # noqa: BLE001 - Untranslatable, or a step that refuses: the vendor route decides
            pass
    return (*vendor_models(files, chat_template), "vendor")


def write_tokenizer_irs(files: dict[str, Path], chat_template: str | None, output_dir: Path) -> list[str]:
    """Write openvino_tokenizer.xml/.bin and openvino_detokenizer.xml/.bin; return the file names."""
    torch_before = "torch" in sys.modules
    try:
        tokenizer, detokenizer, _ = tokenizer_models(files, chat_template)
    except (CheckpointError, ExportFailedError):
        raise
    except Exception as exc:  # the converter raises many types; say which step failed
        raise ExportFailedError(f"openvino_tokenizers could not convert the tokenizer: {exc}") from exc
    if not torch_before and "torch" in sys.modules:  # pragma: no cover - guards the no-torch promise
        raise ExportFailedError("internal error: tokenizer conversion imported torch")
    ov.save_model(tokenizer, str(output_dir / C.TOKENIZER_XML))
    ov.save_model(detokenizer, str(output_dir / C.DETOKENIZER_XML))
    return [C.TOKENIZER_XML, C.TOKENIZER_BIN, C.DETOKENIZER_XML, C.DETOKENIZER_BIN]
