"""Every GGUF fact this backend relies on, in one place.

Names and numbers follow llama.cpp's ``gguf-py/gguf/constants.py`` and ``ggml.h`` (GGUF v3). The
writer, the metadata builder and the tests read them from here, so a format change is one edit.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "GGUF_MAGIC", "GGUF_VERSION", "ALIGNMENT", "QUANTIZATION_VERSION", "ARCH", "GGUF_ARCHES", "arch_key",
    "ValueType", "GGMLType", "FileType", "TokenType", "BLOCK_SIZES",
    "Key", "TensorName", "LLAMA_EOG_TEXTS", "PRE_TOKENIZERS", "GPT2_PATTERN",
    "KERNEL_TYPES", "LLAMA_QUANTIZER_SCHEMES", "SCHEME_FILE_TYPES", "PRECISION_SCHEMES",
]

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32  # llama.cpp's default ``general.alignment``
QUANTIZATION_VERSION = 2  # ``general.quantization_version`` written by llama.cpp since 2023
ARCH = "phi3"
#: ``general.architecture`` for each phi_quant architecture this backend writes (llama.cpp ``LLM_ARCH_*``).
GGUF_ARCHES = {"phi3": "phi3", "phimoe": "phimoe"}
#: The importance matrix a calibrated export writes next to its model (not a model: loaders skip it).
IMATRIX_FILE = "imatrix.gguf"


class ValueType(IntEnum):
    """Types of GGUF metadata values."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


class GGMLType(IntEnum):
    """Tensor element types (``enum ggml_type``) this backend writes or asks llama.cpp for."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    BF16 = 30


#: (elements per block, bytes per block) for each type.
BLOCK_SIZES = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.BF16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
}


class FileType(IntEnum):
    """``general.file_type`` / ``enum llama_ftype``: the mix a file was made with."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q4_1 = 3
    MOSTLY_Q8_0 = 7
    MOSTLY_Q4_K_M = 15
    MOSTLY_Q5_K_M = 17
    MOSTLY_Q6_K = 18
    MOSTLY_BF16 = 32


class TokenType(IntEnum):
    """``tokenizer.ggml.token_type`` values."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


def arch_key(key: str, gguf_arch: str) -> str:
    """A model key of :class:`Key` (written for ``phi3``) under another architecture's prefix:
    ``arch_key(Key.CONTEXT_LENGTH, "phimoe") == "phimoe.context_length"``; other keys unchanged."""
    prefix = ARCH + "."
    return gguf_arch + "." + key[len(prefix):] if key.startswith(prefix) else key


class Key:
    """Metadata keys. Model keys carry the :data:`ARCH` prefix; :func:`arch_key` moves them to another."""

    ARCHITECTURE = "general.architecture"
    NAME = "general.name"
    GENERAL_TYPE = "general.type"  # "imatrix" in an importance-matrix file
    # llama.cpp importance-matrix files (common/imatrix-loader.h)
    IMATRIX_DATASETS = "imatrix.datasets"
    IMATRIX_CHUNK_COUNT = "imatrix.chunk_count"
    IMATRIX_CHUNK_SIZE = "imatrix.chunk_size"
    FILE_TYPE = "general.file_type"
    QUANTIZATION_VERSION = "general.quantization_version"
    ALIGNMENT = "general.alignment"

    CONTEXT_LENGTH = f"{ARCH}.context_length"
    EMBEDDING_LENGTH = f"{ARCH}.embedding_length"
    FEED_FORWARD_LENGTH = f"{ARCH}.feed_forward_length"
    BLOCK_COUNT = f"{ARCH}.block_count"
    HEAD_COUNT = f"{ARCH}.attention.head_count"
    HEAD_COUNT_KV = f"{ARCH}.attention.head_count_kv"
    KEY_LENGTH = f"{ARCH}.attention.key_length"
    VALUE_LENGTH = f"{ARCH}.attention.value_length"
    RMS_EPS = f"{ARCH}.attention.layer_norm_rms_epsilon"
    SLIDING_WINDOW = f"{ARCH}.attention.sliding_window"
    ROPE_DIMENSION_COUNT = f"{ARCH}.rope.dimension_count"
    ROPE_FREQ_BASE = f"{ARCH}.rope.freq_base"
    ROPE_ORIG_CONTEXT = f"{ARCH}.rope.scaling.original_context_length"
    ROPE_ATTN_FACTOR = f"{ARCH}.rope.scaling.attn_factor"
    EXPERT_COUNT = f"{ARCH}.expert_count"
    EXPERT_USED_COUNT = f"{ARCH}.expert_used_count"

    TOKENIZER_MODEL = "tokenizer.ggml.model"
    TOKENIZER_PRE = "tokenizer.ggml.pre"
    TOKENS = "tokenizer.ggml.tokens"
    SCORES = "tokenizer.ggml.scores"
    TOKEN_TYPES = "tokenizer.ggml.token_type"
    MERGES = "tokenizer.ggml.merges"
    BOS_ID = "tokenizer.ggml.bos_token_id"
    EOS_ID = "tokenizer.ggml.eos_token_id"
    EOT_ID = "tokenizer.ggml.eot_token_id"
    UNK_ID = "tokenizer.ggml.unknown_token_id"
    PAD_ID = "tokenizer.ggml.padding_token_id"
    ADD_BOS = "tokenizer.ggml.add_bos_token"
    ADD_EOS = "tokenizer.ggml.add_eos_token"
    ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"
    CHAT_TEMPLATE = "tokenizer.chat_template"
    #: Our own key (llama.cpp ignores it): every id the HF generation config stops at, so
    #: phi-quant's runtime stops where transformers does even when GGUF has no key for an id.
    STOP_IDS = "phi_quant.stop_token_ids"


#: Token texts llama.cpp itself treats as end-of-generation (``llama-vocab.cpp``), Phi-relevant subset.
LLAMA_EOG_TEXTS = ("<|endoftext|>", "<|end|>", "</s>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>")


class TensorName:
    """GGUF tensor names of the ``phi3`` and ``phimoe`` architectures (llama.cpp ``LLM_TENSOR_*``).

    ``phi3`` keeps qkv and gate_up fused; ``phimoe`` has separate q/k/v with biases, norms with
    biases, a router and each layer's experts stacked into one tensor per matrix (``*_exps``,
    numpy shape [experts, rows, cols], i.e. ggml ``{cols, rows, experts}``).
    """

    TOKEN_EMBD = "token_embd.weight"
    OUTPUT_NORM = "output_norm.weight"
    OUTPUT_NORM_BIAS = "output_norm.bias"
    OUTPUT = "output.weight"
    OUTPUT_BIAS = "output.bias"
    ROPE_FACTORS_LONG = "rope_factors_long.weight"
    ROPE_FACTORS_SHORT = "rope_factors_short.weight"
    ATTN_NORM = "blk.{layer}.attn_norm.weight"
    ATTN_NORM_BIAS = "blk.{layer}.attn_norm.bias"
    ATTN_QKV = "blk.{layer}.attn_qkv.weight"
    ATTN_Q = "blk.{layer}.attn_q.weight"
    ATTN_Q_BIAS = "blk.{layer}.attn_q.bias"
    ATTN_K = "blk.{layer}.attn_k.weight"
    ATTN_K_BIAS = "blk.{layer}.attn_k.bias"
    ATTN_V = "blk.{layer}.attn_v.weight"
    ATTN_V_BIAS = "blk.{layer}.attn_v.bias"
    ATTN_OUTPUT = "blk.{layer}.attn_output.weight"
    ATTN_OUTPUT_BIAS = "blk.{layer}.attn_output.bias"
    FFN_NORM = "blk.{layer}.ffn_norm.weight"
    FFN_NORM_BIAS = "blk.{layer}.ffn_norm.bias"
    FFN_UP = "blk.{layer}.ffn_up.weight"  # the fused gate_up: rows [gate | up]
    FFN_DOWN = "blk.{layer}.ffn_down.weight"
    FFN_GATE_INP = "blk.{layer}.ffn_gate_inp.weight"  # the router [experts, hidden]
    FFN_GATE_EXPS = "blk.{layer}.ffn_gate_exps.weight"  # every expert's w1, stacked
    FFN_UP_EXPS = "blk.{layer}.ffn_up_exps.weight"  # w3
    FFN_DOWN_EXPS = "blk.{layer}.ffn_down_exps.weight"  # w2


#: The byte-level BPE split pattern GPT-2 (and a ``ByteLevel(use_regex=true)`` pre-tokenizer) uses.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

#: HF ``tokenizer.json`` split regex -> ``tokenizer.ggml.pre`` name llama.cpp implements with that
#: regex (``llama-vocab.cpp``). Only names whose llama.cpp side adds no other behaviour
#: (no forced BOS, merges honoured) are listed, so the ids match the Hugging Face tokenizer's.
PRE_TOKENIZERS = {
    GPT2_PATTERN: "gpt-2",
    # cl100k (Phi-4, DBRX)
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""": "dbrx",
    # o200k (Phi-4-mini, GPT-4o)
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""": "gpt-4o",
    # Qwen2
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""": "qwen2",
}

#: A tokenizer.json ``Digits`` pre-tokenizer with ``individual_digits``: every numeric character alone,
#: which llama.cpp writes as the split regex ``\p{N}``.
DIGITS_SPLIT = r"\p{N}"

#: Pre-tokenizers made of several splits (tokenizer.json's, in order) -> the llama.cpp name that
#: applies the same splits in the same order: "smollm" (SmolLM/SmolLM2 vocabularies) splits every
#: digit off, then applies the GPT-2 split.
PRE_TOKENIZER_SEQUENCES = {
    (DIGITS_SPLIT, GPT2_PATTERN): "smollm",
}

#: Types our kernel writes itself (bit-identical to ggml's reference quantizer).
KERNEL_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")

#: Schemes made by llama.cpp's own ``llama_model_quantize`` from a lossless temporary GGUF.
LLAMA_QUANTIZER_SCHEMES = ("Q4_K_M", "Q5_K_M", "Q6_K")

#: ``general.file_type`` written for each scheme.
SCHEME_FILE_TYPES = {
    "F32": FileType.ALL_F32,
    "F16": FileType.MOSTLY_F16,
    "BF16": FileType.MOSTLY_BF16,
    "Q8_0": FileType.MOSTLY_Q8_0,
    "Q4_0": FileType.MOSTLY_Q4_0,
    "Q4_1": FileType.MOSTLY_Q4_1,
    "Q4_K_M": FileType.MOSTLY_Q4_K_M,
    "Q5_K_M": FileType.MOSTLY_Q5_K_M,
    "Q6_K": FileType.MOSTLY_Q6_K,
}

#: precision -> (default scheme, other schemes selectable with ``--scheme``).
PRECISION_SCHEMES = {
    "fp32": ("F32", ()),
    "fp16": ("F16", ()),
    "bf16": ("BF16", ()),
    "int8": ("Q8_0", ("Q6_K", "Q5_K_M")),
    "int4": ("Q4_0", ("Q4_1", "Q4_K_M")),
}
