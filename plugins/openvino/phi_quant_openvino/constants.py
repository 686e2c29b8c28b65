"""Names and values of the OpenVINO GenAI model layout, in one place.

Everything a runtime looks up by name lives here: file names LLMPipeline opens, the input and
output names of the stateful decoder (the ones optimum-intel's export produces), variable ids
of the KV cache, and the weight modes NNCF knows.
"""

from __future__ import annotations

# Files of an exported model directory (what openvino_genai.LLMPipeline and OVModelForCausalLM read).
MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"
TOKENIZER_XML = "openvino_tokenizer.xml"
TOKENIZER_BIN = "openvino_tokenizer.bin"
DETOKENIZER_XML = "openvino_detokenizer.xml"
DETOKENIZER_BIN = "openvino_detokenizer.bin"
GENERATION_CONFIG = "generation_config.json"
HF_CONFIG = "config.json"
OPENVINO_CONFIG = "openvino_config.json"  # optimum-intel reads the quantization settings from here

# Decoder inputs and outputs (optimum-intel stateful layout).
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
BEAM_IDX = "beam_idx"
LOGITS = "logits"


def kv_variable_id(layer: int, kind: str) -> str:
    """Variable id of one KV-cache state, spelled as optimum's make_stateful names it."""
    return f"past_key_values.{layer}.{kind}present.{layer}.{kind}"


# Weight modes: NNCF's CompressWeightsMode values, plus the two float ones.
FP32 = "fp32"
FP16 = "fp16"
INT8_ASYM = "int8_asym"
INT8_SYM = "int8_sym"
INT4_ASYM = "int4_asym"
INT4_SYM = "int4_sym"
INT_MODES = (INT8_ASYM, INT8_SYM, INT4_ASYM, INT4_SYM)

#: OpenVINO element type name of the compressed constant per mode (NNCF's compression_dtype).
STORAGE_TYPE = {INT8_ASYM: "u8", INT8_SYM: "i8", INT4_ASYM: "u4", INT4_SYM: "i4"}
BITS = {INT8_ASYM: 8, INT8_SYM: 8, INT4_ASYM: 4, INT4_SYM: 4}

#: Defaults NNCF uses (and optimum-cli passes) for each precision.
DEFAULT_INT4_GROUP = 128
DEFAULT_RATIO = 1.0

# Runtime properties.
CPU = "CPU"
ATTENTION_BACKEND = "ATTENTION_BACKEND"
