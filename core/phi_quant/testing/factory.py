"""Tiny, seeded Phi checkpoints in the real Hugging Face layout, for tests of every backend.

Each variant keeps the quirks of the model it imitates (fused qkv/gate_up, GQA, LongRoPE with a
small original context so short and long prompts take different factors, partial rotary, tied
embeddings, a vocabulary padded beyond the tokenizer, real special tokens and chat templates;
for Phi-3.5-MoE experts with a router, LayerNorm with shifts, q/k/v/o and lm_head biases and
LongRoPE mscales) with dimensions small enough to convert and run in seconds. Every matmul input dimension is a
multiple of 256, so group sizes 16..256 all divide. Weights are random but scaled so that
attention and the MLP matter and next-token distributions are far sharper than uniform.

Only numpy, sentencepiece and tokenizers are used here: no torch, no transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..arch import TensorRole, TensorSpec, normalize_config
from ..cache import build_once
from ..model.safetensors_io import SafetensorsWriter
from ..quant.reference import f32_to_bf16_bits
from . import tiny_tokenizers as tt

__all__ = [
    "VARIANTS",
    "MOE_VARIANTS",
    "ALL_VARIANTS",
    "variants_of",
    "DTYPES",
    "FACTORY_VERSION",
    "VariantSpec",
    "variant_spec",
    "make_checkpoint",
    "cached_checkpoint",
    "cached_build",
    "copy_checkpoint",
    "edit_config",
    "rewrite_header",
    "add_tensor",
    "make_large_checkpoint",
    "make_large_moe_checkpoint",
    "make_shaped_checkpoint",
    "checkpoint_bytes",
    "FULL_SIZE",
    "FULL_SIZE_SHARD_BYTES",
    "float32_to_bf16_bits",
]

#: The dense (``phi3``) variants. Tests that exercise every layout use :data:`ALL_VARIANTS`.
VARIANTS = ("phi3-mini", "phi3.5-longrope", "phi4", "phi4-mini")
#: The mixture-of-experts (``phimoe``) variants.
MOE_VARIANTS = ("phimoe",)
#: Every tiny variant, of every architecture.
ALL_VARIANTS = VARIANTS + MOE_VARIANTS
DTYPES = ("bf16", "f16", "f32")
_TORCH_DTYPE = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}

#: Bump when the produced checkpoints change; the cache key also hashes this module's sources.
FACTORY_VERSION = "1"


@dataclass(frozen=True)
class VariantSpec:
    """Shape and quirks of one tiny variant."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab_size: int
    theta: float
    tokenizer: str  # "spm" | "phi4" | "phi4-mini"
    max_position: int
    original_max_position: int | None = None
    longrope: bool = False
    partial_rotary: float = 1.0
    tied: bool = False
    sliding_window: int | None = None
    arch: str = "phi3"  # the phi_quant.arch module that reads it
    experts: int = 0  # experts per layer (phimoe); 0: a dense MLP
    attention_bias: bool = False
    lm_head_bias: bool = False
    mscale: tuple[float, float] | None = None  # LongRoPE (short, long) mscale (phimoe)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary)


_SPECS = {
    "phi3-mini": VariantSpec("phi3-mini", 256, 2, 4, 4, 64, 512, 512, 10000.0, "spm", 4096, 4096,
                             sliding_window=2047),
    "phi3.5-longrope": VariantSpec("phi3.5-longrope", 256, 2, 4, 4, 64, 512, 512, 10000.0, "spm", 4096, 64,
                                   longrope=True, sliding_window=262144),
    "phi4": VariantSpec("phi4", 512, 2, 8, 2, 64, 1024, 640, 250000.0, "phi4", 16384, 16384),
    "phi4-mini": VariantSpec("phi4-mini", 256, 2, 4, 2, 64, 512, 640, 10000.0, "phi4-mini", 4096, 64,
                             longrope=True, partial_rotary=0.75, tied=True, sliding_window=262144),
    # Phi-3.5-MoE: 4 experts instead of 16 (top-2 as the real one), GQA, the Phi-3 tokenizer, the real mscales.
    "phimoe": VariantSpec("phimoe", 256, 2, 4, 2, 64, 512, 512, 10000.0, "spm", 4096, 64, longrope=True,
                          sliding_window=4096, arch="phimoe", experts=4, attention_bias=True, lm_head_bias=True,
                          mscale=(1.243163121016122, 1.243163121016122)),
}

_SPM_BASE = 480  # SentencePiece pieces (3 specials + 256 bytes + merges); 11 added tokens follow
_BPE_BASE = 600  # byte-level BPE: 256 bytes + merges


def variant_spec(variant: str) -> VariantSpec:
    if variant not in _SPECS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(ALL_VARIANTS)}")
    return _SPECS[variant]


def variants_of(arch: str) -> tuple[str, ...]:
    """The tiny variants of architecture ``arch`` (``"phi3"``, ``"phimoe"``)."""
    return tuple(v for v in ALL_VARIANTS if _SPECS[v].arch == arch)


# -- numbers -------------------------------------------------------------------------------------

def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even) and return the 16-bit patterns as uint16.

    The quantizers' numpy specification does the rounding (as torch and safetensors store bf16).
    """
    return f32_to_bf16_bits(x)


def _encode(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return float32_to_bf16_bits(x)
    if dtype == "f16":
        return x.astype(np.float16)
    return x.astype(np.float32)


def _rope_factors(n: int) -> tuple[list[float], list[float]]:
    """Short/long LongRoPE factors shaped like Phi-3.5's: ~1 for fast dims, growing for slow ones."""
    t = np.linspace(0.0, 1.0, n)
    short = 1.0 + 0.6 * t**3 + 0.02 * np.sin(7.0 * t)
    long = 1.0 + 0.08 + 39.0 * t**2.2
    return [round(float(v), 4) for v in short], [round(float(v), 4) for v in long]


# -- config files --------------------------------------------------------------------------------

def _tokenizer_files(spec: VariantSpec) -> tt.TokenizerFiles:
    model_max = spec.max_position
    if spec.tokenizer == "spm":
        return tt.build_sentencepiece(base_size=_SPM_BASE, model_max_length=model_max)
    return tt.build_byte_level(flavour=spec.tokenizer, base_size=_BPE_BASE, vocab_size=spec.vocab_size,
                               model_max_length=model_max)


def _config_dicts(spec: VariantSpec, tok: tt.TokenizerFiles, dtype: str) -> tuple[dict[str, Any], dict[str, Any]]:
    ids = tok.added_tokens
    if spec.tokenizer == "spm":
        bos, eos, pad = 1, ids["<|endoftext|>"], ids["<|endoftext|>"]
        gen_eos: Any = [ids["<|endoftext|>"], ids["<|assistant|>"], ids["<|end|>"]]
    elif spec.tokenizer == "phi4":
        bos, eos, pad = ids["<|endoftext|>"], ids["<|im_end|>"], spec.vocab_size - 1
        gen_eos = eos
    else:
        bos = eos = pad = ids["<|endoftext|>"]
        gen_eos = [ids["<|end|>"], ids["<|endoftext|>"]]
    config: dict[str, Any] = {
        "architectures": ["Phi3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "embd_pdrop": 0.0,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "hidden_size": spec.hidden,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate,
        "max_position_embeddings": spec.max_position,
        "model_type": "phi3",
        "num_attention_heads": spec.heads,
        "num_hidden_layers": spec.layers,
        "num_key_value_heads": spec.kv_heads,
        "original_max_position_embeddings": spec.original_max_position,
        "pad_token_id": pad,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": spec.theta,
        "sliding_window": spec.sliding_window,
        "tie_word_embeddings": spec.tied,
        "torch_dtype": _TORCH_DTYPE[dtype],
        "transformers_version": "4.49.0",
        "use_cache": True,
        "vocab_size": spec.vocab_size,
    }
    if spec.partial_rotary != 1.0:
        config["partial_rotary_factor"] = spec.partial_rotary
        config.update({"full_attn_mod": 1, "interpolate_factor": 1, "lm_head_bias": False, "mlp_bias": False})
    if spec.longrope:
        short, long = _rope_factors(spec.rotary_dim // 2)
        config["rope_scaling"] = {"long_factor": long, "short_factor": short, "type": "longrope"}
    if spec.arch == "phimoe":
        config = _phimoe_config(config, spec)
    generation = {"_from_model_config": True, "bos_token_id": bos, "eos_token_id": gen_eos, "pad_token_id": pad,
                  "transformers_version": "4.49.0"}
    return config, generation


def _phimoe_config(phi3: dict[str, Any], spec: VariantSpec) -> dict[str, Any]:
    """The Phi-3.5-MoE config.json keys (the hub's, remote-code class name) on ``spec``'s sizes."""
    drop = ("embd_pdrop", "resid_pdrop", "full_attn_mod", "interpolate_factor", "mlp_bias")
    config = {k: v for k, v in phi3.items() if k not in drop}
    config.update({
        "architectures": ["PhiMoEForCausalLM"],
        "model_type": "phimoe",
        "attention_bias": spec.attention_bias,
        "lm_head_bias": spec.lm_head_bias,
        "hidden_dropout": 0.0,
        "input_jitter_noise": 0.01,
        "router_jitter_noise": 0.01,
        "router_aux_loss_coef": 0.0,
        "output_router_logits": False,
        "num_local_experts": spec.experts,
        "num_experts_per_tok": 2,
        "transformers_version": "4.43.3",
    })
    if spec.mscale and config.get("rope_scaling"):
        config["rope_scaling"] = {**config["rope_scaling"], "short_mscale": spec.mscale[0], "long_mscale": spec.mscale[1],
                                  "original_max_position_embeddings": spec.original_max_position}
    return dict(sorted(config.items()))


# -- weights -------------------------------------------------------------------------------------

def _tensor_plan(config: dict[str, Any]) -> list[TensorSpec]:
    """The tensors of a checkpoint with this config, in stream order, as its architecture lists them."""
    cfg = normalize_config(config)
    return cfg.arch.stream_plan(cfg)


# Init scales, chosen by measurement (see tests/test_factory.py): attention scores with a standard
# deviation of a few units (so attention is selective), block outputs comparable to the residual,
# and logits spread enough that the top token takes a large share of the probability.
_QK_SCALE = 1.2
_V_SCALE = 1.0
_O_SCALE = 1.0
_GATE_SCALE = 1.5
_DOWN_SCALE = 1.0
_LOGIT_SCALE = 4.0
_ROUTER_SCALE = 1.0  # router logits of about unit spread: near-ties (weights below 1) are rare, as in a trained router
_BIAS_SCALE = 0.1  # biases and LayerNorm shifts: small, but a backend that drops one is caught


def _init_tensor(rng: np.random.Generator, spec: VariantSpec, tensor: TensorSpec) -> np.ndarray:
    h, role, shape = spec.hidden, tensor.role, tensor.shape
    if role.is_norm:  # RMSNorm weights: around 1, not exactly 1, so a backend that drops them is caught
        return rng.uniform(0.7, 1.3, size=shape).astype(np.float32)
    std = rng.standard_normal(shape, dtype=np.float32)
    if role is TensorRole.EMBED:
        return std * (_LOGIT_SCALE / np.sqrt(h) if spec.tied else 1.0)
    if role is TensorRole.LM_HEAD:
        return std * (_LOGIT_SCALE / np.sqrt(h))
    if role is TensorRole.QKV:
        q, kv = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
        scale = np.full((shape[0], 1), _QK_SCALE / np.sqrt(h), np.float32)
        scale[q + kv:] = _V_SCALE / np.sqrt(h)
        return std * scale
    if role is TensorRole.O:
        return std * (_O_SCALE / np.sqrt(shape[1]))
    if role is TensorRole.GATE_UP or role is TensorRole.GATE or role is TensorRole.UP:
        return std * (_GATE_SCALE / np.sqrt(h))
    if role is TensorRole.DOWN:
        return std * (_DOWN_SCALE / np.sqrt(shape[1]))
    if role is TensorRole.Q or role is TensorRole.K:
        return std * (_QK_SCALE / np.sqrt(h))
    if role is TensorRole.V:
        return std * (_V_SCALE / np.sqrt(h))
    if role is TensorRole.ROUTER:
        return std * (_ROUTER_SCALE / np.sqrt(h))
    if role.is_bias:
        return std * _BIAS_SCALE
    raise AssertionError(tensor.name)


def _shard_plan(names: list[str], num_shards: int) -> list[list[str]]:
    num_shards = max(1, min(num_shards, len(names)))
    per = -(-len(names) // num_shards)
    return [names[k : k + per] for k in range(0, len(names), per)]


def _write_shards(
    out: Path, tensors: list[TensorSpec], dtype: str, num_shards: int,
    produce: Callable[[TensorSpec], Iterator[np.ndarray]],
) -> None:
    """Write tensors into ``num_shards`` safetensors files (+ index when > 1), one tensor at a time."""
    by_name = {t.name: t for t in tensors}
    shapes = {t.name: t.shape for t in tensors}
    plan = _shard_plan([t.name for t in tensors], num_shards)
    files = (["model.safetensors"] if len(plan) == 1 else
             [f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors" for k in range(len(plan))])
    weight_map: dict[str, str] = {}
    total = 0
    for fname, names in zip(files, plan):
        decl = [(n, dtype, shapes[n]) for n in names]
        with SafetensorsWriter(out / fname, decl, metadata={"format": "pt"}) as w:
            for n in names:
                for chunk in produce(by_name[n]):
                    w.write(n, chunk)
                weight_map[n] = fname
                total += int(np.prod(shapes[n])) * (4 if dtype == "f32" else 2)
    if len(plan) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer(out: Path, tok: tt.TokenizerFiles) -> None:
    _write_json(out / "tokenizer.json", tok.tokenizer_json)
    _write_json(out / "tokenizer_config.json", tok.tokenizer_config)
    _write_json(out / "special_tokens_map.json", tok.special_tokens_map)
    if tok.sentencepiece_model is not None:
        (out / "tokenizer.model").write_bytes(tok.sentencepiece_model)
        base = _SPM_BASE
        _write_json(out / "added_tokens.json", {k: v for k, v in tok.added_tokens.items() if v >= base})


def make_checkpoint(variant: str, out_dir: str | os.PathLike, *, seed: int = 0, dtype: str = "bf16",
                    num_shards: int = 2) -> Path:
    """Write a tiny ``variant`` checkpoint into ``out_dir`` (created if missing) and return its path.

    ``num_shards=1`` writes a single ``model.safetensors``; more writes ``model-0000k-of-0000n``
    shards with ``model.safetensors.index.json``, as Hugging Face does for large models.
    """
    spec = variant_spec(variant)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer_files(spec)
    assert tok.size <= spec.vocab_size, (tok.size, spec.vocab_size)
    config, generation = _config_dicts(spec, tok, dtype)
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", generation)
    _write_tokenizer(out, tok)

    # One generator per tensor, seeded by (seed, variant, name): shard layout never changes values.
    def produce(tensor: TensorSpec) -> Iterator[np.ndarray]:
        key = int.from_bytes(hashlib.sha256(f"{seed}/{variant}/{tensor.name}".encode()).digest()[:8], "little")
        yield _encode(_init_tensor(np.random.default_rng(key), spec, tensor), dtype)

    _write_shards(out, _tensor_plan(config), dtype, num_shards, produce)
    return out


# -- the cache -----------------------------------------------------------------------------------

def _compute_source_digest() -> str:
    h = hashlib.sha256(FACTORY_VERSION.encode())
    for mod in (__file__, tt.__file__):
        h.update(Path(mod).read_bytes())
    h.update(tt.corpus_text().encode())
    return h.hexdigest()[:12]


# Taken once at import: a process keys the cache by the code it actually runs, even if the
# source file is edited while it runs.
_SOURCE_DIGEST = _compute_source_digest()


def cache_root() -> Path:
    """Where :func:`cached_checkpoint` keeps checkpoints: ``$PHI_QUANT_TEST_CACHE`` or the temp dir."""
    base = os.environ.get("PHI_QUANT_TEST_CACHE") or os.path.join(tempfile.gettempdir(), "phi-quant-test-cache")
    return Path(base) / f"factory-{FACTORY_VERSION}-{_SOURCE_DIGEST}"


def cached_checkpoint(variant: str, dtype: str = "bf16") -> Path:
    """The tiny ``variant`` checkpoint (seed 0, 2 shards), built once and shared by all test processes."""
    variant_spec(variant)
    return cached_build(f"{variant}-{dtype}", lambda tmp: make_checkpoint(variant, tmp, dtype=dtype))


def cached_build(name: str, build: Callable[[Path], Any]) -> Path:
    """The checkpoint ``cache_root() / name``, written by ``build(directory)`` on first use.

    Atomic (:func:`phi_quant.cache.build_once`): concurrent pytest workers never see a
    half-written checkpoint. A directory counts as built once it holds ``config.json``.
    """
    return build_once(cache_root(), name, build)


def copy_checkpoint(variant: str, dst: str | os.PathLike, **config_changes: Any) -> Path:
    """A private, writable copy of the tiny ``variant`` checkpoint at ``dst``, with ``config_changes`` set.

    For tests that need one property changed (a short sliding window, untied embeddings) or a file
    broken, without touching the shared cached checkpoint.
    """
    dst = Path(dst)
    shutil.copytree(cached_checkpoint(variant), dst)
    if config_changes:
        edit_config(dst, **config_changes)
    return dst


def edit_config(checkpoint: str | os.PathLike, **changes: Any) -> None:
    """Set top-level keys of ``checkpoint``'s config.json."""
    path = Path(checkpoint) / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def rewrite_header(shard: str | os.PathLike, edit: Callable[[dict[str, Any]], Any] | None = None,
                   append: bytes = b"", text: Callable[[str], str] | None = None) -> None:
    """Edit the JSON header of one safetensors file in place: ``edit`` changes the dict, then ``text``
    the JSON text (for what ``json`` cannot write, such as ``1e400``); ``append`` adds bytes after the
    data section. For tests of broken or hostile checkpoints."""
    path = Path(shard)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    if edit is not None:
        edit(header)
    blob = (text or (lambda t: t))(json.dumps(header)).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data[8 + n :] + append)


def add_tensor(checkpoint: str | os.PathLike, name: str, dtype: str, shape: tuple[int, ...], data: bytes,
               shard: str | None = None) -> None:
    """Append tensor ``name`` (safetensors ``dtype`` such as "BF16", raw ``data``) to a shard of
    ``checkpoint`` (the last one unless named) and list it in the index when there is one."""
    root = Path(checkpoint)
    shard = shard or sorted(p.name for p in root.glob("*.safetensors"))[-1]
    path = root / shard
    n = int.from_bytes(path.read_bytes()[:8], "little")
    end = path.stat().st_size - 8 - n
    rewrite_header(path, lambda h: h.update({name: {"dtype": dtype, "shape": list(shape),
                                                    "data_offsets": [end, end + len(data)]}}), append=data)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        content = json.loads(index.read_text())
        content["weight_map"][name] = shard
        index.write_text(json.dumps(content))


# -- full-size shapes for the scale bench ------------------------------------------------------

#: Real models' shapes and config quirks (what conversion cost depends on), for
#: :func:`make_shaped_checkpoint`: Phi-3.5-mini (3.82 B parameters, LongRoPE, 2 shards of bf16 as
#: published) and Phi-4 (14.7 B, GQA 40/10, vocab 100352). Tokenizers are the tiny variants'
#: (padded to the vocabulary size, as the real ones are); LongRoPE factors are synthetic.
FULL_SIZE = {
    "phi3.5-mini": VariantSpec("phi3.5-mini", 3072, 32, 32, 32, 96, 8192, 32064, 10000.0, "spm", 131072, 4096,
                               longrope=True, sliding_window=262144),
    "phi4": VariantSpec("phi4", 5120, 40, 40, 10, 128, 17920, 100352, 250000.0, "phi4", 16384, 16384),
}
#: Shard size of the published checkpoints (Phi-3.5-mini: 2 shards, Phi-4: 6).
FULL_SIZE_SHARD_BYTES = 5_000_000_000


def checkpoint_bytes(spec: VariantSpec, dtype: str = "bf16") -> int:
    """Weight bytes of a checkpoint of ``spec`` (without writing it)."""
    config, _ = _config_dicts(spec, _tokenizer_files(spec), dtype)
    return sum(t.numel for t in _tensor_plan(config)) * (4 if dtype == "f32" else 2)


def make_shaped_checkpoint(out_dir: str | os.PathLike, spec: VariantSpec, *, dtype: str = "bf16", seed: int = 0,
                           shard_bytes: int = 500_000_000) -> Path:
    """Write a checkpoint of ``spec``'s shapes, config and tokenizer with random weights, one 8 MiB chunk at a time.

    Values are those of :func:`make_large_checkpoint` (cheap to make, finite, small), so a
    multi-gigabyte checkpoint is written at disk speed and memory use stays at one chunk.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    return _write_generated(out_dir, spec, spec, dtype, seed, shard_bytes)


# -- a large checkpoint for streaming/RSS tests --------------------------------------------------

def make_large_checkpoint(out_dir: str | os.PathLike, min_bytes: int = 1_100_000_000, *, dtype: str = "bf16",
                          seed: int = 0, shard_bytes: int = 500_000_000) -> Path:
    """Write a Phi-3-shaped checkpoint of at least ``min_bytes`` of weights, one chunk at a time.

    hidden 2048, 32 heads of 64, intermediate 8192, vocab 32064 (padded like Phi-3's) and as many
    layers as ``min_bytes`` needs; the largest tensor is the 64 MiB (bf16) fused gate_up. Values are
    random bit patterns with a fixed exponent range (cheap to make, finite, small). Memory use is
    one 8 MiB chunk, never a whole tensor.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    item = 4 if dtype == "f32" else 2
    base = variant_spec("phi3-mini")
    h, inter, vocab = 2048, 8192, 32064
    per_layer = (2 * h + 3 * h * h + h * h + 2 * inter * h + h * inter) * item
    fixed = (2 * vocab * h + h) * item
    layers = max(1, -(-(min_bytes - fixed) // per_layer))
    spec = VariantSpec("phi3-large", h, layers, 32, 32, 64, inter, vocab, 10000.0, "spm", 4096, 4096,
                       sliding_window=2047)
    return _write_generated(out_dir, spec, base, dtype, seed, shard_bytes)


def _write_generated(out_dir: str | os.PathLike, spec: VariantSpec, base: VariantSpec, dtype: str, seed: int,
                     shard_bytes: int) -> Path:
    """A checkpoint of ``spec``'s shapes with ``base``'s tokenizer and random values, in shards."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer_files(base)
    config, generation = _config_dicts(spec, tok, dtype)
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", generation)
    _write_tokenizer(out, tok)
    tensors = _tensor_plan(config)
    total = sum(t.numel * (4 if dtype == "f32" else 2) for t in tensors)
    _write_shards(out, tensors, dtype, max(2, -(-total // shard_bytes)), _random_bits(dtype, seed))
    return out


def _random_bits(dtype: str, seed: int) -> Callable[[TensorSpec], Iterator[np.ndarray]]:
    """Chunks of random, finite, small values for each tensor (1-D tensors: ones), 8 MiB at a time."""
    rng = np.random.default_rng(seed)
    chunk = 4 * 2**20

    def produce(tensor: TensorSpec) -> Iterator[np.ndarray]:
        shape = tensor.shape
        n = int(np.prod(shape))
        if len(shape) == 1:
            yield _encode(np.ones(shape, np.float32), dtype)
            return
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            if dtype == "f32":
                bits = rng.integers(0, 2**32, size=m, dtype=np.uint32)
                yield ((bits & np.uint32(0x807FFFFF)) | np.uint32(0x3B800000)).view(np.float32)
            else:
                bits = rng.integers(0, 2**16, size=m, dtype=np.uint16)
                # sign + mantissa random, exponent fixed at 2^-8: magnitudes in [0.0039, 0.0078)
                mask, expo = (0x807F, 0x3B80) if dtype == "bf16" else (0x83FF, 0x1C00)
                yield (bits & np.uint16(mask)) | np.uint16(expo)

    return produce


def make_large_moe_checkpoint(out_dir: str | os.PathLike, num_experts: int = 16, *, dtype: str = "bf16", seed: int = 0,
                              shard_bytes: int = 500_000_000) -> Path:
    """Write a Phi-3.5-MoE-shaped checkpoint whose size grows with ``num_experts``, one chunk at a time.

    hidden 2048, 32 query / 8 kv heads of 64, 2 layers, experts of intermediate 2048, vocab
    32064: every tensor has the same shape whatever the expert count, and 16 experts make 1.11 GB
    of bf16 weights (8 make 0.71 GB). The largest tensor is the 125 MiB embedding; one expert
    matrix is 8 MiB. Memory use is one 8 MiB chunk, never a whole tensor.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    spec = VariantSpec("phimoe-large", 2048, 2, 32, 8, 64, 2048, 32064, 10000.0, "spm", 4096, 4096,
                       sliding_window=4096, arch="phimoe", experts=num_experts, attention_bias=True, lm_head_bias=True)
    return _write_generated(out_dir, spec, variant_spec("phimoe"), dtype, seed, shard_bytes)
