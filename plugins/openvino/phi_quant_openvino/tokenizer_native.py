"""Tokenizer and detokenizer models from :class:`~.tokenizer_json.TokenizerFacts`, without transformers.

The facts are translated into openvino_tokenizers' own pipeline steps
(``openvino_tokenizers.tokenizer_pipeline``), in the order its Hugging Face parser adds them:
special-token split, normalizers, pre-tokenizers, the BPE model, truncation, the post-processor's
segments, padding; then vocabulary decoding, the decoders, UTF-8 validation. The pipeline object
builds the graphs; the rt_info keys are those ``convert_tokenizer`` writes, with the options this
project always passes (``with_detokenizer=True, skip_special_tokens=True``). The output is meant to
be byte-identical to the vendor route's (``tests/test_tokenizer_ir.py``).
"""

from __future__ import annotations

import json
from dataclasses import fields
from enum import Enum
from typing import Any

from openvino import Model
from openvino_tokenizers import tokenizer_pipeline as tp
from openvino_tokenizers.constants import (
    ATTENTION_MASK_INPUT_NAME,
    ORIGINAL_POST_PROCESSOR_NAME,
    ORIGINAL_TOKENIZER_CLASS_NAME,
    PROCESSED_POST_PROCESSOR_NAME,
    TOKEN_IDS_INPUT_NAME,
    TOKENIZER_NAME,
    UTF8ReplaceMode,
)
from openvino_tokenizers.utils import (
    TokenzierConversionParams,
    change_inputs_type,
    change_outputs_type,
    update_rt_info_with_environment,
)

from .tokenizer_json import TokenizerFacts, Untranslatable

__all__ = ["build_models", "CONVERSION_OPTIONS"]

#: The convert_tokenizer options this project passes (the rest stay at the vendor's defaults).
CONVERSION_OPTIONS = {"with_detokenizer": True, "skip_special_tokens": True}
#: What ``str(type(tokenizer))`` says for PreTrainedTokenizerFast.from_pretrained in transformers 5.
TOKENIZER_CLASS = "<class 'transformers.tokenization_utils_tokenizers.TokenizersBackend'>"
_UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


def _pattern(d: dict[str, Any], what: str) -> str:
    pattern = d.get("pattern") or {}
    text = pattern.get("String") or pattern.get("Regex")  # the vendor passes a String as a regex, unescaped
    if not isinstance(text, str):
        raise Untranslatable(f"{what} has no pattern")
    return text


def _normalizer(d: dict[str, Any]) -> list[tp.BasePipelineStep]:
    kind = d.get("type")
    if kind == "Prepend":
        return [tp.RegexNormalizationStep.prepend_regex(d.get("prepend", ""))]
    if kind == "Replace":
        return [tp.RegexNormalizationStep(regex_search_pattern=_pattern(d, "Replace"), replace_term=d["content"])]
    if kind in _UNICODE_FORMS:
        return [tp.NormalizeUnicode(kind)]
    raise Untranslatable(f"normalizer {kind!r}")


def _byte_level(d: dict[str, Any], individual_digits: bool = False) -> list[tp.BasePipelineStep]:
    steps: list[tp.BasePipelineStep] = []
    if d.get("add_prefix_space"):
        steps.append(tp.RegexNormalizationStep.add_prefix_whitespace_regex())
    if d.get("use_regex", True):
        steps.append(tp.RegexSplitStep.byte_level_splitter(individual_digits=individual_digits))
    steps.append(tp.BytesToCharsStep())
    return steps


def _pre_tokenizer(d: dict[str, Any]) -> list[tp.BasePipelineStep]:
    kind = d.get("type")
    if kind == "ByteLevel":
        return _byte_level(d)
    if kind == "Split":
        given = d.get("pattern") or {}
        pattern = given.get("String") if given.get("String") is not None else given.get("Regex")
        if not isinstance(pattern, str) or not pattern:  # an empty one splits into characters: not translated
            raise Untranslatable("Split has no pattern, or an empty one")
        behaviour = str(d.get("behavior", "")).lower().rstrip("d")
        if behaviour not in ("isolate", "remove", "merged_with_previous", "merged_with_next", "contiguous"):
            raise Untranslatable(f"Split behaviour {d.get('behavior')!r}")
        return [tp.RegexSplitStep(split_pattern=pattern, invert=bool(d.get("invert")), behaviour=behaviour)]
    if kind == "Digits":
        return [tp.RegexSplitStep.digits_splitter("isolate" if d.get("individual_digits") else "contiguous")]
    raise Untranslatable(f"pre-tokenizer {kind!r}")


def _pre_tokenizers(pre: dict[str, Any] | None) -> list[tp.BasePipelineStep]:
    if pre is None:
        return []
    if pre.get("type") != "Sequence":
        return _pre_tokenizer(pre)
    steps: list[tp.BasePipelineStep] = []
    items = list(pre.get("pretokenizers", []))
    i = 0
    while i < len(items):
        here, after = items[i], items[i + 1] if i + 1 < len(items) else {}
        # Digits(individual) then a regex ByteLevel: the vendor folds both into one split regex
        if (here.get("type") == "Digits" and here.get("individual_digits") and after.get("type") == "ByteLevel"
                and after.get("use_regex", True)):
            steps += _byte_level(after, individual_digits=True)
            i += 2
            continue
        steps += _pre_tokenizer(here)
        i += 1
    return steps


def _segments(post: dict[str, Any] | None) -> tuple[tp.CombineSegmentsStep, dict[str, Any]]:
    """The CombineSegments step and the processed template the rt_info records."""
    plain = {"single": {"ids": [-1], "type_ids": [0]}, "pair": {"ids": [-1, -2], "type_ids": [0, 0]}}
    kind = None if post is None else post.get("type")
    if kind == "Sequence":
        inner = [p.get("type") for p in post.get("processors", [])]
        if not inner or set(inner) - {"ByteLevel", "TemplateProcessing"} or inner.count("TemplateProcessing") > 1:
            raise Untranslatable(f"post-processor sequence {inner}")
        template = next((p for p in post["processors"] if p["type"] == "TemplateProcessing"), None)
        return _segments(template) if template is not None else _segments(None)
    if kind in (None, "ByteLevel"):
        return tp.CombineSegmentsStep([tp.Sequence()], add_special_tokens=True), plain
    if kind == "TemplateProcessing":
        try:
            step = tp.CombineSegmentsStep.from_hf_json_template_postprocessor(post, 1, True)
        except (KeyError, TypeError, AttributeError) as exc:
            raise Untranslatable(f"TemplateProcessing is malformed ({exc})") from exc
        return step, None  # processed template: worked out against the vocabulary later
    raise Untranslatable(f"post-processor {kind!r}")


def _decoders(dec: dict[str, Any] | None) -> list[tp.BasePipelineStep]:
    if dec is None:
        return [tp.FuseStep()]
    if dec.get("type") == "ByteLevel":
        return [tp.CharsToBytesStep()]
    if dec.get("type") != "Sequence":
        raise Untranslatable(f"decoder {dec.get('type')!r}")
    steps: list[tp.BasePipelineStep] = []
    for d in dec.get("decoders", []):
        kind = d.get("type")
        try:
            if kind == "Replace":
                steps.append(tp.RegexDecodingStep.parse_replace_dict(d))
            elif kind == "Strip":
                steps.append(tp.RegexDecodingStep.parse_strip_dict(d))
            elif kind in ("Fuse", "ByteFallback", "ByteLevel"):
                steps.append({"Fuse": tp.FuseStep, "ByteFallback": tp.ByteFallbackStep,
                              "ByteLevel": tp.CharsToBytesStep}[kind]())
            else:
                raise Untranslatable(f"decoder {kind!r}")
        except ValueError as exc:
            raise Untranslatable(f"decoder {kind!r} with these options ({exc})") from exc
    return steps


def _pipeline(facts: TokenizerFacts) -> tuple[tp.TokenizerPipeline, dict[str, Any] | None]:
    tj = facts.tokenizer_json
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise Untranslatable(f"tokenization model {model.get('type')!r} with these options")
    merges = model.get("merges")
    if merges and isinstance(merges[0], str):  # old "a b" merges: transformers re-saves them as pairs
        pairs = [m.split(" ") for m in merges]
        if any(len(p) != 2 for p in pairs):
            raise Untranslatable("a merge is not two tokens")
        tj = {**tj, "model": {**model, "merges": pairs}}
    pipeline = tp.TokenizerPipeline()
    pipeline.number_of_inputs = 1
    pipeline.add_steps(tp.SpecialTokensSplit(special_tokens=[
        tp.SpecialToken(text=t.content, strip_left=t.lstrip, strip_right=t.rstrip) for t in facts.added]))
    norm = tj.get("normalizer")
    for d in [] if norm is None else norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]:
        pipeline.add_steps(_normalizer(d))
    pipeline.add_steps(_pre_tokenizers(tj.get("pre_tokenizer")))
    try:
        pipeline.add_steps(tp.BPETokenizationStep.from_hf_json(tj))
    except (KeyError, TypeError, NotImplementedError) as exc:
        raise Untranslatable(f"the BPE model lacks a field ({exc})") from exc
    pipeline.vocab = pipeline[-1].vocab
    combine, processed = _segments(tj.get("post_processor"))
    added_count = combine.number_of_added_tokens
    pipeline.add_steps(tp.TruncationStep(
        max_length=min(facts.model_max_length - added_count, 2**31 - 1 - added_count),
        truncate_right=facts.truncation_right, truncation=False))
    pipeline.add_steps(combine)
    pipeline.add_steps(tp.PaddingStep(token=facts.pad_token, _token_id=facts.pad_token_id, pad_to_max_length=False,
                                      max_length=facts.model_max_length, pad_right=not facts.padding_left))
    pipeline.add_steps(tp.VocabDecoderStep.from_hf_json(
        tokenizer_json=tj, pipeline_vocab=pipeline.vocab,
        skip_tokens={t.id: t.content for t in facts.added if t.special},
        added_tokens={t.id: t.content for t in facts.added},
        do_skip_tokens=True, is_byte_level=pipeline.is_byte_level))
    pipeline.add_steps(_decoders(tj.get("decoder")))
    pipeline.add_steps(tp.UTF8ValidateStep(mode=UTF8ReplaceMode.REPLACE))
    return pipeline, processed


def _processed_template(post: dict[str, Any], facts: TokenizerFacts) -> dict[str, Any]:
    """TemplateProcessing with text inputs as -1, -2 and special tokens as their ids (vendor's layout)."""
    if post.get("type") == "Sequence":
        post = next(p for p in post["processors"] if p["type"] == "TemplateProcessing")
    ids = {**(facts.tokenizer_json["model"]["vocab"]), **{t.content: t.id for t in facts.added}}

    def one(template: list[dict[str, Any]]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {"ids": [], "type_ids": []}
        sequence = -1
        for kind, item in (next(iter(el.items())) for el in template):
            out["type_ids"].append(item["type_id"])
            if kind == "Sequence":
                out["ids"].append(sequence)
                sequence -= 1
            elif item["id"] in ids:
                out["ids"].append(ids[item["id"]])
            else:
                raise Untranslatable(f"post-processor token {item['id']!r} is not in the vocabulary")
        return out

    return {"single": one(post["single"]), "pair": one(post["pair"])}


def _set_rt_info(model: Model, facts: TokenizerFacts, processed: dict[str, Any] | None) -> None:
    model.set_rt_info(TOKENIZER_CLASS, ORIGINAL_TOKENIZER_CLASS_NAME)
    params = TokenzierConversionParams(**CONVERSION_OPTIONS)
    for f in fields(params):
        value = getattr(params, f.name)
        model.set_rt_info(str(value) if isinstance(value, (bool, Enum)) else value, f.name)
    for key, value in (("bos_token_id", facts.bos_token_id), ("eos_token_id", facts.eos_token_id),
                       ("pad_token_id", facts.pad_token_id), ("chat_template", facts.chat_template)):
        if value is not None:
            model.set_rt_info(value, key)
    update_rt_info_with_environment(model)
    post = facts.tokenizer_json.get("post_processor")
    if post is not None:
        model.set_rt_info(json.dumps(post), ORIGINAL_POST_PROCESSOR_NAME)
        model.set_rt_info(json.dumps(processed), PROCESSED_POST_PROCESSOR_NAME)


def build_models(facts: TokenizerFacts) -> tuple[Model, Model]:
    """(tokenizer, detokenizer) as ``convert_tokenizer`` returns them for the same files.

    :raises Untranslatable: before any graph node is made, when a component is not translated.
    """
    pipeline, processed = _pipeline(facts)
    post = facts.tokenizer_json.get("post_processor")
    if processed is None and post is not None:
        processed = _processed_template(post, facts)
    graph = pipeline.get_tokenizer_ov_subgraph()
    outputs = []
    for name in (TOKEN_IDS_INPUT_NAME, ATTENTION_MASK_INPUT_NAME):
        found = next((o for o in graph.outputs if name in o.names), None)
        if found is None:  # pragma: no cover - PaddingStep always names both
            raise Untranslatable(f"the tokenizer graph has no {name} output")
        found.add_names({name})
        outputs.append(found)
    tokenizer = Model(outputs, graph.get_parameters(), TOKENIZER_NAME)
    tokenizer.add_sinks(graph.get_sinks())
    detokenizer = pipeline.get_detokenizer_ov_subgraph()
    for model in (tokenizer, detokenizer):
        _set_rt_info(model, facts, processed)
    out_type = TokenzierConversionParams().tokenizer_output_type
    return change_outputs_type(tokenizer, out_type), change_inputs_type(detokenizer, out_type)
