"""phi-quant's conformance kit run against this backend (every variant x declared precision).

The kit's streaming check converts its generated ~1.1 GB checkpoint to Q4_0 (int4) in a
subprocess and requires peak RSS below 600 MiB.
"""

import dataclasses

from phi_quant.testing.kit import BackendConformance


class TestLlamaCppConformance(BackendConformance):
    backend = "llamacpp"
    rss_limit_mb = 600.0
    streaming_precisions = ("int4",)

    def recipe_options(self, variant, precision, recipe):
        options = super().recipe_options(variant, precision, recipe)
        # Q4_0 has no zero point: hqq runs on Q4_1, whose asymmetry the scheme fixes (no --asymmetric)
        return dataclasses.replace(options, scheme="Q4_1", symmetric=None) if recipe == "hqq" else options
