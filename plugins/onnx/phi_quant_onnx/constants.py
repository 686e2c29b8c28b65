"""Every name the ONNX / onnxruntime-genai format fixes, in one place.

Operator names and domains, graph input/output names, initializer names, the file names a
genai model folder holds and the keys of ``genai_config.json``. The conventions are
onnxruntime-genai's (its model builder writes the same input/output names and config keys), so a
folder we write is run by ``og.Model`` exactly like one the builder wrote.
"""

from __future__ import annotations

# --- files of a model folder ----------------------------------------------------------------
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
GENAI_CONFIG_FILE = "genai_config.json"
#: Tokenizer files onnxruntime-genai's tokenizer (onnxruntime-extensions) reads when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)

# --- opsets / domains -------------------------------------------------------------------------
ONNX_DOMAIN = ""
MS_DOMAIN = "com.microsoft"
ONNX_OPSET = 23  # RMSNormalization is standard from opset 23
MS_OPSET = 1
IR_VERSION = 10
PRODUCER = "phi-quant-onnx"

# --- operators --------------------------------------------------------------------------------
OP_GQA = "GroupQueryAttention"  # com.microsoft: fused attention + KV cache (+ rotary)
OP_ROTARY = "RotaryEmbedding"  # com.microsoft: NEOX/partial rotary from cos/sin caches
OP_SKIP_RMSNORM = "SkipSimplifiedLayerNormalization"  # com.microsoft: residual add + RMSNorm
OP_SKIP_LAYERNORM = "SkipLayerNormalization"  # com.microsoft: residual add + LayerNorm (scale and shift)
OP_LAYERNORM = "LayerNormalization"  # standard ONNX op (opset 17)
OP_MOE = "MoE"  # com.microsoft: mixture of experts, float experts
OP_QMOE = "QMoE"  # com.microsoft: mixture of experts, block-quantized experts
OP_RMSNORM = "RMSNormalization"  # standard ONNX op (opset 23); ORT's "SimplifiedLayerNormalization" fails onnx.checker
OP_MATMUL_NBITS = "MatMulNBits"  # com.microsoft: block-quantized weight MatMul
OP_GATHER_BLOCK_QUANTIZED = "GatherBlockQuantized"  # com.microsoft: embedding lookup on MatMulNBits data

# --- graph inputs / outputs (onnxruntime-genai names) -----------------------------------------
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"
PAST_KEY = "past_key_values.{}.key"
PAST_VALUE = "past_key_values.{}.value"
PRESENT_KEY = "present.{}.key"
PRESENT_VALUE = "present.{}.value"
# genai_config.json uses printf-style patterns for the per-layer names.
PAST_KEY_PATTERN = "past_key_values.%d.key"
PAST_VALUE_PATTERN = "past_key_values.%d.value"
PRESENT_KEY_PATTERN = "present.%d.key"
PRESENT_VALUE_PATTERN = "present.%d.value"

# --- initializer names (Hugging Face style, like the builder) ---------------------------------
EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head"
COS_CACHE = "cos_cache"
SIN_CACHE = "sin_cache"


def layer_prefix(layer: int) -> str:
    return f"model.layers.{layer}"


# --- onnxruntime-genai ------------------------------------------------------------------------
#: genai's decoder-only model type per phi_quant.arch layout (the builder's names for
#: Phi3ForCausalLM and PhiMoEForCausalLM; both run genai's decoder-only pipeline).
GENAI_MODEL_TYPES = {"phi3": "phi3", "phimoe": "phimoe"}
#: onnxruntime execution provider names per export target.
TARGET_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider"}
#: The provider key genai_config.json uses under session_options.provider_options.
GENAI_PROVIDER_KEYS = {"cuda": "cuda", "dml": "dml"}
TARGETS = ("cpu", "cuda", "dml")
TESTED_TARGETS = ("cpu",)

# --- ONNX Runtime kernel limits (measured on ORT 1.32 CPU, pinned by tests) --------------------
#: GroupQueryAttention needs head_size % 8 == 0; with do_rotary, head_size % 16 == 0 and a cos/sin
#: cache whose second dim is <= head_size/2 and a multiple of 8.
GQA_HEAD_MULTIPLE = 8
GQA_ROTARY_HEAD_MULTIPLE = 16
GQA_ROTARY_HALF_MULTIPLE = 8

#: MatMulNBits accuracy_level values.
ACCURACY_LEVELS = {0: "unset", 1: "fp32", 2: "fp16", 3: "bf16", 4: "int8"}
