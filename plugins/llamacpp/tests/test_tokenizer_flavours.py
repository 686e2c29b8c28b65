"""Phi-3 tokenizer flavours the tiny factory does not produce by default, checked against HF ids.

- chat tokens that strip the whitespace after them (``rstrip``, as in the published Phi-3
  tokenizers): llama.cpp does this only for models whose general.name says "phi-3";
- a SentencePiece-BPE tokenizer.json without ``tokenizer.model``: scores from merge ranks.
"""

from __future__ import annotations

import json

from phi_quant.model.source import open_model
from phi_quant.testing.factory import copy_checkpoint
from phi_quant.types import ExportOptions, NullProgress
from phi_quant_llamacpp import plugin

TEXTS = [
    "<|user|>\nHello there<|end|>\n<|assistant|>\n",
    "<|system|>  spaced   out\t<|end|>\n\n<|user|> x <|end|><|assistant|>",
    "plain text, no specials: héllo 😀",
    " leading and trailing  ",
    "</s> after eos <s> bos <|endoftext|> done",
]


def _variant_copy(tmp_path, edit):
    dst = copy_checkpoint("phi3-mini", tmp_path / "phi3-variant")
    edit(dst)
    return dst


def _export_and_compare(path, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with open_model(path) as src:
        res = plugin.export(source=src, output_dir=out, options=ExportOptions(precision="int8"), progress=NullProgress())
        tok = src.hf_tokenizer()
        with plugin.load_model(path=out, options={}) as model:
            for text in TEXTS:
                assert model.tokenize(text) == tok.encode(text, add_special_tokens=False).ids, text
    return res


def test_phi3_rstrip_chat_tokens(tmp_path):
    def edit(d):
        p = d / "tokenizer.json"
        tj = json.loads(p.read_text(encoding="utf-8"))
        for a in tj["added_tokens"]:
            if a["special"] and a["content"] not in ("<unk>", "<s>", "<|endoftext|>"):
                a["rstrip"] = True
        p.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")

    res = _export_and_compare(_variant_copy(tmp_path, edit), tmp_path)
    assert "phi-3" in res.details["general.name"]


def test_spm_scores_from_tokenizer_json_alone(tmp_path):
    res = _export_and_compare(_variant_copy(tmp_path, lambda d: (d / "tokenizer.model").unlink()), tmp_path)
    assert any("merge ranks" in n for n in res.notes)


def test_bos_added_when_the_tokenizer_adds_it(tmp_path):
    def edit(d):
        p = d / "tokenizer.json"
        tj = json.loads(p.read_text(encoding="utf-8"))
        tj["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        }
        p.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
        c = d / "tokenizer_config.json"
        tc = json.loads(c.read_text(encoding="utf-8"))
        tc["add_bos_token"] = True
        c.write_text(json.dumps(tc), encoding="utf-8")

    path = _variant_copy(tmp_path, edit)
    _export_and_compare(path, tmp_path)
    with open_model(path) as src, plugin.load_model(path=tmp_path / "out", options={}) as model:
        tok = src.hf_tokenizer()
        for text in TEXTS:
            ids = tok.encode(text, add_special_tokens=True).ids
            assert ids[0] == 1 and model.tokenize(text, add_special_tokens=True) == ids
