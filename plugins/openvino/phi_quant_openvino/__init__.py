"""phi-quant's OpenVINO backend: Phi-3/Phi-4 checkpoints to stateful OpenVINO IR, streamed."""

__version__ = "0.1.0"
