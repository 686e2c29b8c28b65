"""phi-quant's backend conformance kit run against the mlx backend (export through the core's
atomic ``convert``, load, tokenizer ids, fidelity, NaN/Inf refusal, peak RSS on a large checkpoint)."""

from phi_quant.testing.kit import BackendConformance


class TestMLXConformance(BackendConformance):
    backend = "mlx"
    # The large-checkpoint RSS check runs the packing path (the one with temporaries) and a cast.
    streaming_precisions = ("int4", "fp16")
