"""Scheme choice from the user's options, and that decoding inverts the stored layout exactly."""

import numpy as np
import pytest

from phi_quant.errors import UnsupportedPrecisionError
from phi_quant.types import ExportOptions
from phi_quant_reference.weights import decode, resolve_scheme


@pytest.mark.parametrize("options, name", [
    (ExportOptions("int4"), "int4_asym_g32"),
    (ExportOptions("int4", group_size=128, symmetric=True), "int4_sym_g128"),
    (ExportOptions("int8", scheme="int8_sym_g64"), "int8_sym_g64"),
    (ExportOptions("fp16"), "fp16"),
])
def test_options_choose_the_scheme(options, name):
    assert resolve_scheme(options).name == name


@pytest.mark.parametrize("options", [
    ExportOptions("int3"), ExportOptions("int4", group_size=48), ExportOptions("int4", scheme="int8_sym_g32"),
    ExportOptions("int4", scheme="Q4_0"), ExportOptions("fp16", group_size=32),
])
def test_unsupported_options_are_refused(options):
    with pytest.raises(UnsupportedPrecisionError):
        resolve_scheme(options)


def test_decode_unpacks_low_nibble_first_and_subtracts_zero_points():
    # one row, two blocks of 16: codes 0..15 then 15..0; zero points 8 (block 0) and 3 (block 1)
    codes = np.concatenate([np.arange(16), np.arange(16)[::-1]]).astype(np.uint8).reshape(1, 2, 16)
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    arrays = {"blocks": blocks, "scales": np.array([[0.5, 2.0]], np.float32),
              "zero_points": np.array([[8 | (3 << 4)]], np.uint8)}
    w = decode(arrays, "int4_asym_g16", (1, 32))
    np.testing.assert_array_equal(w[0, :16], (np.arange(16) - 8) * 0.5)
    np.testing.assert_array_equal(w[0, 16:], (np.arange(16)[::-1] - 3) * 2.0)
    sym = decode({"blocks": blocks, "scales": arrays["scales"]}, "int4_sym_g16", (1, 32))
    np.testing.assert_array_equal(sym[0, 16:], (np.arange(16)[::-1] - 8) * 2.0)
