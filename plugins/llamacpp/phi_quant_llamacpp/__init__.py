"""phi-quant backend for llama.cpp: Phi-3/Phi-4 checkpoints to GGUF, run in llama-cpp-python."""

__version__ = "0.1.0"
