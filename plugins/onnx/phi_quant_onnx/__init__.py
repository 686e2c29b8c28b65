"""phi-quant backend for ONNX Runtime GenAI: a streamed ONNX graph (MatMulNBits for int4/int8).

The hooks live in :mod:`phi_quant_onnx.plugin`; the graph in :mod:`phi_quant_onnx.decoder`.
"""

__version__ = "0.1.0"
