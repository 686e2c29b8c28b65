"""phi-quant backend for MLX: writes the folder ``mlx_lm.load`` opens (config.json, safetensors
shards, tokenizer files) and runs it with mlx-lm for ``run`` and ``eval``.

Conversion needs only numpy and phi-quant's kernel; ``mlx``/``mlx_lm`` are imported lazily, when a
model is loaded or the hardware is probed.
"""

__version__ = "0.1.0"
