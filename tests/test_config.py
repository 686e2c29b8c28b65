"""Config normalisation for the real published Phi checkpoints, and refusal of look-alikes.

The config dicts below have the shape, keys and values of the published ``config.json`` files
(factor lists are stand-ins of the right length; their values only pass through).
"""

from __future__ import annotations

import math

import pytest

from phi_quant.errors import UnsupportedModelError
from phi_quant.model.config import normalize_config


def _factors(n: int, top: float) -> list[float]:
    return [round(1.0 + (top - 1.0) * (i / (n - 1)) ** 2, 4) for i in range(n)]


def _phi3_base(**over):
    cfg = {
        "architectures": ["Phi3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
        "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072,
        "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 4096, "model_type": "phi3",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
        "original_max_position_embeddings": 4096, "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "rope_theta": 10000.0, "sliding_window": 2047, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.40.2", "use_cache": True, "vocab_size": 32064,
    }
    cfg.update(over)
    return cfg


PHI3_MINI_4K = _phi3_base()
PHI3_MINI_128K = _phi3_base(
    max_position_embeddings=131072, sliding_window=262144,
    rope_scaling={"long_factor": _factors(48, 60.0), "short_factor": _factors(48, 2.0), "type": "su"},
)
PHI35_MINI = _phi3_base(
    max_position_embeddings=131072, sliding_window=262144,
    rope_scaling={"long_factor": _factors(48, 64.0), "short_factor": _factors(48, 2.8), "type": "longrope"},
)
PHI3_MEDIUM_4K = _phi3_base(hidden_size=5120, intermediate_size=17920, num_attention_heads=40,
                            num_hidden_layers=40, num_key_value_heads=10)
PHI4 = _phi3_base(
    bos_token_id=100257, eos_token_id=100265, pad_token_id=100349, hidden_size=5120, intermediate_size=17920,
    num_attention_heads=40, num_hidden_layers=40, num_key_value_heads=10, max_position_embeddings=16384,
    original_max_position_embeddings=16384, rope_theta=250000.0, sliding_window=None, vocab_size=100352,
)
PHI4_MINI = _phi3_base(
    bos_token_id=199999, eos_token_id=199999, pad_token_id=199999, full_attn_mod=1, interpolate_factor=1,
    lm_head_bias=False, mlp_bias=False, max_position_embeddings=131072, num_attention_heads=24,
    num_key_value_heads=8, partial_rotary_factor=0.75, sliding_window=262144, tie_word_embeddings=True,
    vocab_size=200064,
    rope_scaling={"long_factor": _factors(48, 50.0), "short_factor": _factors(48, 1.5), "type": "longrope"},
)

ATTN_131K = math.sqrt(1 + math.log(131072 / 4096) / math.log(4096))  # ≈ 1.1902


@pytest.mark.parametrize(
    "raw, expect",
    [
        (PHI3_MINI_4K, dict(head_dim=96, num_kv_heads=32, rotary=96, longrope=False, tied=False, window=2047,
                            family="phi-3-mini-4k", theta=10000.0)),
        (PHI3_MINI_128K, dict(head_dim=96, num_kv_heads=32, rotary=96, longrope=True, tied=False, window=262144,
                              family="phi-3.5-mini / phi-3-mini-128k", theta=10000.0)),
        (PHI35_MINI, dict(head_dim=96, num_kv_heads=32, rotary=96, longrope=True, tied=False, window=262144,
                          family="phi-3.5-mini / phi-3-mini-128k", theta=10000.0)),
        (PHI3_MEDIUM_4K, dict(head_dim=128, num_kv_heads=10, rotary=128, longrope=False, tied=False, window=2047,
                              family="phi-3-medium-4k", theta=10000.0)),
        (PHI4, dict(head_dim=128, num_kv_heads=10, rotary=128, longrope=False, tied=False, window=None,
                    family="phi-4", theta=250000.0)),
        (PHI4_MINI, dict(head_dim=128, num_kv_heads=8, rotary=96, longrope=True, tied=True, window=262144,
                         family="phi-4-mini", theta=10000.0)),
    ],
    ids=["phi3-mini-4k", "phi3-mini-128k-su", "phi3.5-mini", "phi3-medium-4k", "phi4", "phi4-mini"],
)
def test_real_configs(raw, expect):
    c = normalize_config(raw)
    assert c.architecture == "Phi3ForCausalLM"
    assert c.head_dim == expect["head_dim"] and c.num_kv_heads == expect["num_kv_heads"]
    assert c.rope.rotary_dim == expect["rotary"] and c.rope.theta == expect["theta"]
    assert c.rope.is_longrope == expect["longrope"] and c.tie_word_embeddings == expect["tied"]
    assert c.sliding_window == expect["window"] and c.family == expect["family"]
    assert c.qkv_rows == c.num_heads * c.head_dim + 2 * c.num_kv_heads * c.head_dim
    assert c.vocab_size == raw["vocab_size"] and c.eos_token_ids == (raw["eos_token_id"],)
    if c.rope.is_longrope:
        scaling = raw["rope_scaling"]
        assert c.rope.short_factor == tuple(scaling["short_factor"]) and c.rope.long_factor == tuple(scaling["long_factor"])
        assert len(c.rope.short_factor) == c.rope.rotary_dim // 2
        assert c.rope.original_max_position == 4096
        assert c.rope.attention_factor == pytest.approx(ATTN_131K) and abs(ATTN_131K - 1.1902) < 1e-4
    else:
        assert c.rope.attention_factor == 1.0


def test_parameter_counts_of_published_models():
    assert normalize_config(PHI3_MINI_4K).parameter_count() == 3_821_079_552
    assert normalize_config(PHI4_MINI).parameter_count() == 3_836_021_760  # tied: lm_head counted once
    assert normalize_config(PHI4).parameter_count() == 14_659_507_200


def _to_transformers5(raw: dict) -> dict:
    """The same config as transformers 5 saves it: rope settings under ``rope_parameters``."""
    out = {k: v for k, v in raw.items() if k not in ("rope_scaling", "rope_theta", "partial_rotary_factor")}
    params = {"rope_theta": raw["rope_theta"], "rope_type": "default"}
    if raw.get("rope_scaling"):
        params.update({k: v for k, v in raw["rope_scaling"].items() if k != "type"}, rope_type="longrope")
        params["original_max_position_embeddings"] = raw["original_max_position_embeddings"]
    if "partial_rotary_factor" in raw:
        params["partial_rotary_factor"] = raw["partial_rotary_factor"]
    out["rope_parameters"] = params
    out["dtype"] = out.pop("torch_dtype")
    return out


@pytest.mark.parametrize("raw", [PHI3_MINI_4K, PHI35_MINI, PHI4, PHI4_MINI], ids=["phi3", "phi3.5", "phi4", "phi4-mini"])
def test_transformers5_rope_parameters(raw):
    new = _to_transformers5(raw)
    if "original_max_position_embeddings" in new and new.get("rope_parameters", {}).get("rope_type") == "longrope":
        del new["original_max_position_embeddings"]  # only under rope_parameters
    assert normalize_config(new).rope == normalize_config(raw).rope
    assert normalize_config(new).torch_dtype == "bfloat16"


def test_transformers_saved_config_normalises_the_same(tmp_path):
    """What transformers itself writes for our tiny LongRoPE model reads back identically."""
    transformers = pytest.importorskip("transformers")
    from phi_quant.testing.factory import cached_checkpoint

    path = cached_checkpoint("phi4-mini")
    raw = __import__("json").loads((path / "config.json").read_text())
    transformers.AutoConfig.from_pretrained(path).save_pretrained(tmp_path)
    saved = __import__("json").loads((tmp_path / "config.json").read_text())
    a, b = normalize_config(raw), normalize_config(saved)
    assert (a.rope, a.num_kv_heads, a.tie_word_embeddings, a.vocab_size) == (b.rope, b.num_kv_heads, b.tie_word_embeddings, b.vocab_size)


def test_explicit_attention_factor_and_factor_win():
    raw = dict(PHI35_MINI, rope_scaling=dict(PHI35_MINI["rope_scaling"], attention_factor=1.5))
    assert normalize_config(raw).rope.attention_factor == 1.5
    raw = dict(PHI35_MINI, rope_scaling=dict(PHI35_MINI["rope_scaling"], factor=8.0))
    assert normalize_config(raw).rope.attention_factor == pytest.approx(math.sqrt(1 + math.log(8) / math.log(4096)))


@pytest.mark.parametrize(
    "arch, words",
    [
        ("Phi3SmallForCausalLM", "block-sparse"),
        ("Phi3VForCausalLM", "vision"),
        ("PhiForCausalLM", "Phi-2"),
        ("LlamaForCausalLM", "LlamaForCausalLM"),
        ("Phi4MMForCausalLM", "multimodal"),
    ],
)
def test_unsupported_architectures_are_refused_by_name(arch, words):
    with pytest.raises(UnsupportedModelError) as e:
        normalize_config(dict(PHI3_MINI_4K, architectures=[arch]))
    msg = str(e.value)
    assert arch in msg and words in msg and "Phi3ForCausalLM" in msg


@pytest.mark.parametrize(
    "change, words",
    [
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "yarn"),
        ({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 10, "long_factor": [1.0] * 10}}, "rotary_dim/2"),
        ({"num_key_value_heads": 7}, "multiple"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_inconsistent_configs_are_refused(change, words):
    with pytest.raises(UnsupportedModelError, match=words):
        normalize_config(dict(PHI3_MINI_4K, **change))
