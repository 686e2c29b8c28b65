"""The reference backend against the whole conformance kit: every tiny variant, every precision,
and once more with non-default integer options (symmetric, groups of 64)."""

from phi_quant.testing.kit import BackendConformance
from phi_quant.types import ExportOptions


class TestConformance(BackendConformance):
    backend = "reference"


class TestSymmetricGroup64(BackendConformance):
    backend = "reference"
    variants = ("phi3-mini", "phi4")
    precisions = ("int8", "int4")
    streaming_precisions = ()

    def export_options(self, variant, precision):
        return ExportOptions(precision=precision, group_size=64, symmetric=True)
