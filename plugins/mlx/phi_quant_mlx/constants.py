"""Every name and number of the mlx-lm layout, in one place.

Facts from mlx-lm 0.32 (``mlx_lm/utils.py``: ``load_model``, ``quantize_model``, ``save_model``,
``save_config``; ``mlx_lm/models/phi3.py``, ``phimoe.py``, ``switch_layers.py``) and mlx (``mx.quantize``).
"""

from __future__ import annotations

from phi_quant.model.tensors import TensorRole

#: ``model_type`` mlx-lm dispatches on (``mlx_lm/models/phi3.py``, ``mlx_lm/models/phimoe.py``).
MODEL_TYPE = "phi3"
PHIMOE_MODEL_TYPE = "phimoe"

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_SHARD = "model.safetensors"
#: mlx-lm loads every file matching ``model*.safetensors`` (the index is not one of them).
SHARD_PATTERN = "model-{:05d}-of-{:05d}.safetensors"
#: mlx-lm writes this metadata into its shards.
SHARD_METADATA = {"format": "mlx"}
#: mlx-lm's default shard bound (``MAX_FILE_SIZE_GB``).
DEFAULT_SHARD_BYTES = 5 << 30

#: Tokenizer files of the source (``ModelSource.tokenizer_files``) that are NOT copied: mlx-lm's
#: tokenizer reads its chat template from tokenizer_config.json or chat_template.jinja.
SKIPPED_TOKENIZER_FILES = ("chat_template.json",)

#: config.json keys for quantization; the same dict is mirrored under the second key
#: (``save_config`` does this "to support the hf model tree").
QUANT_KEY = "quantization"
QUANT_MIRROR_KEY = "quantization_config"
QUANT_MODE = "affine"
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 64
#: Bits per quantized precision.
PRECISION_BITS = {"int8": 8, "int4": 4}
#: Output dtype (safetensors name) per unquantized precision; None = keep the stored dtype.
PRECISION_DTYPE = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "int8": None, "int4": None}
#: Stored dtype (phi-quant name) -> safetensors dtype name.
SAFETENSORS_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
#: Safetensors dtype name -> config.json ``torch_dtype``.
TORCH_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}

#: Parameter suffixes of a quantized module (``nn.QuantizedLinear`` / ``nn.QuantizedEmbedding``).
QUANT_SUFFIXES = ("weight", "scales", "biases")

#: Module path of every 2-D weight mlx-lm's phi3 holds; qkv_proj and gate_up_proj stay fused.
_LAYER_MODULES = {
    TensorRole.QKV: "self_attn.qkv_proj",
    TensorRole.O: "self_attn.o_proj",
    TensorRole.GATE_UP: "mlp.gate_up_proj",
    TensorRole.DOWN: "mlp.down_proj",
    TensorRole.ATTN_NORM: "input_layernorm",
    TensorRole.FFN_NORM: "post_attention_layernorm",
}
_GLOBAL_MODULES = {
    TensorRole.EMBED: "model.embed_tokens",
    TensorRole.FINAL_NORM: "model.norm",
    TensorRole.LM_HEAD: "lm_head",
}


def module_path(role: TensorRole, layer: int | None) -> str:
    """The mlx-lm module path of a tensor (its parameter is ``<path>.weight``)."""
    if role in _GLOBAL_MODULES:
        return _GLOBAL_MODULES[role]
    if role not in _LAYER_MODULES:
        raise ValueError(f"mlx-lm's phi3 keeps qkv_proj/gate_up_proj fused; role {role.value} has no module")
    return f"model.layers.{layer}.{_LAYER_MODULES[role]}"


def packed_width(in_features: int, bits: int) -> int:
    """uint32 words per row of a packed weight (``mx.quantize`` packs 32/bits elements a word)."""
    return in_features * bits // 32


#: The SwitchGLU projection holding every expert's matrix of a role (``w1``/``w3``/``w2``).
PHIMOE_EXPERT_MODULES = {
    TensorRole.GATE: "block_sparse_moe.switch_mlp.gate_proj",
    TensorRole.UP: "block_sparse_moe.switch_mlp.up_proj",
    TensorRole.DOWN: "block_sparse_moe.switch_mlp.down_proj",
}
#: Per-layer modules of mlx-lm's phimoe that phi3 does not have (the rest share phi3's paths).
_PHIMOE_LAYER_MODULES = {
    TensorRole.Q: "self_attn.q_proj",
    TensorRole.K: "self_attn.k_proj",
    TensorRole.V: "self_attn.v_proj",
    TensorRole.ROUTER: "block_sparse_moe.gate",
}


def parameter_path(role: TensorRole, layer: int | None, expert: int | None = None) -> tuple[str, str]:
    """(module path, parameter name) of a tensor of either layout: ``("model.layers.0.self_attn.q_proj", "bias")``.

    An expert's matrix maps to its layer's stacked SwitchGLU projection (the expert index is
    its position along the first axis); a bias or LayerNorm shift is the ``bias`` of its
    weight's module.
    """
    if role.is_bias:
        return parameter_path(role.weight_role, layer)[0], "bias"
    if expert is not None:
        return f"model.layers.{layer}.{PHIMOE_EXPERT_MODULES[role]}", "weight"
    if role in _PHIMOE_LAYER_MODULES:
        return f"model.layers.{layer}.{_PHIMOE_LAYER_MODULES[role]}", "weight"
    return module_path(role, layer), "weight"
