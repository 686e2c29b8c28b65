"""The shared conformance kit, run against the onnx backend (every tiny variant x precision)."""

from phi_quant.testing.kit import BackendConformance


class TestOnnxConformance(BackendConformance):
    backend = "onnx"
    rss_limit_mb = 600
    streaming_precisions = ("int4",)
