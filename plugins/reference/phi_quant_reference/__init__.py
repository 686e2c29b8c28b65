"""phi-quant reference backend: quantized weights in plain safetensors, run by the numpy oracle."""

__version__ = "0.1.0"
