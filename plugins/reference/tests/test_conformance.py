"""The reference backend against the whole conformance kit: every tiny variant, every precision."""

from phi_quant.testing.kit import BackendConformance


class TestConformance(BackendConformance):
    backend = "reference"
