"""The shared conformance kit, run against the OpenVINO backend (every tiny variant x precision)."""

from phi_quant.testing.kit import BackendConformance


class TestOpenVINOConformance(BackendConformance):
    backend = "openvino"
    rss_limit_mb = 1024
    streaming_precisions = ("int4",)
