"""Rule + pack == fused: the kernel's pack entry points write exactly the vendor-exact bytes.

For every kernel layout, packing the round-to-nearest values of the numpy rule
(:func:`phi_quant.quant.values.rtn_values`) must give the bytes of the fused quantizer
(:func:`phi_quant.quant.values.quantize`), which test_kernel_vendors.py holds to each vendor's
own quantizer. Values no vendor would choose (random codes and scales) must pack identically in
C and in the numpy reference, and out-of-range codes are refused.
"""

from __future__ import annotations

import numpy as np
import pytest

import phi_quant.quant as q
from phi_quant.errors import BadWeightsError, KernelError
from phi_quant.quant import _native, cases
from phi_quant.quant import reference as R
from phi_quant.quant.scheme import Scheme
from phi_quant.quant.values import QuantValues, dequantize, dequantize_values, pack, quantize, rtn_values

pytestmark = pytest.mark.skipif(not q.native_available(), reason="phi_quant._kernel is not built")


def schemes_for(k: int) -> list[Scheme]:
    out = [Scheme.ggml(t) for t in ("Q4_0", "Q4_1", "Q8_0")]
    for bits in (4, 8):
        for sym in (True, False):
            for block in (16, 32, 128):
                for sdt in ("f32", "f16"):
                    out.append(Scheme.matmulnbits(bits, block, sym, sdt))
        for group in (32, 64, 128):
            for sdt in ("f32", "f16", "bf16"):
                out.append(Scheme.mlx(bits, group, sdt))
        for sym in (True, False):
            for group in (None, 32, 128):
                out.append(Scheme.nncf(bits, sym, group))
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.ascontiguousarray(a[key]).tobytes() == np.ascontiguousarray(b[key]).tobytes()
        and np.asarray(a[key]).shape == np.asarray(b[key]).shape for key in a)


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(11)
    return {"random": cases.random_weight(rng, 9, 256), "edge": cases.edge_weight(24, 256)}


@pytest.mark.parametrize("kind", ["random", "edge"])
@pytest.mark.parametrize("src", cases.SRC_DTYPES)
def test_rule_then_pack_equals_fused(weights, kind, src):
    raw = cases.encode(weights[kind], src)
    w = R.decode(raw, src)
    for scheme in schemes_for(w.shape[1]):
        for threads in (1, 3):
            fused = quantize(raw, src, scheme, threads=threads)
            packed = pack(rtn_values(w, scheme), scheme, threads=threads)
            assert same(fused, packed), f"{scheme.name} ({scheme.scale_dtype}), {kind}/{src}, {threads} threads"


def test_partial_matmulnbits_block_packs_like_the_fused_kernel(weights):
    w = weights["random"][:, : 256 - 18]
    for scheme in (Scheme.matmulnbits(4, 32, False, "f16"), Scheme.matmulnbits(8, 64, True)):
        assert same(quantize(w, "f32", scheme), pack(rtn_values(w, scheme), scheme))


def random_values(rng: np.random.Generator, scheme: Scheme, n: int, k: int) -> QuantValues:
    lo, hi = scheme.code_range()
    codes = rng.integers(lo, hi + 1, size=(n, k)).astype(np.int8 if lo < 0 else np.uint8)
    g = scheme.groups(k)
    scales = (rng.standard_normal((n, g)) * 0.01).astype(np.float32)
    zeros = None
    if scheme.zero_kind == "int":
        zeros = rng.integers(0, (1 << scheme.bits), size=(n, g)).astype(np.uint8)
    elif scheme.zero_kind == "offset":
        zeros = (rng.standard_normal((n, g)) * 0.05).astype(np.float32)
    return QuantValues(codes, scales, zeros)


def test_any_values_pack_the_same_in_c_and_numpy(monkeypatch):
    rng = np.random.default_rng(5)
    for scheme in schemes_for(256):
        for n, k in ((3, 256), (5, 128)):
            values = random_values(rng, scheme, n, k)
            native = pack(values, scheme, threads=2)
            with monkeypatch.context() as m:
                m.setattr(_native, "lib", None)
                m.setattr(_native, "_warned", True)
                ref = pack(values, scheme)
            assert same(native, ref), scheme.name
            # what the arrays decode to is what the values say
            back = dequantize(native, scheme, (n, k))
            np.testing.assert_array_equal(back, dequantize_values(values, scheme))


def test_nncf_4bit_odd_rows_pack_across_row_boundaries():
    rng = np.random.default_rng(3)
    scheme = Scheme.nncf(4, False, None)
    values = random_values(rng, scheme, 7, 33)  # 231 codes: rows share bytes
    ref = R.nncf_pack(values.codes, values.scales.reshape(7, 1), values.zeros.reshape(7, 1), 4)
    got = pack(values, scheme, threads=3)
    assert got["weight"].tobytes() == ref["weight"].tobytes()
    assert got["zero_point"].tobytes() == ref["zero_point"].tobytes()


@pytest.mark.parametrize("scheme", [Scheme.ggml("Q4_0"), Scheme.matmulnbits(4, 32, False), Scheme.mlx(4, 64, "f16"),
                                    Scheme.nncf(4, True, 32)], ids=lambda s: s.name)
def test_out_of_range_codes_are_a_recipe_bug(scheme):
    rng = np.random.default_rng(1)
    values = random_values(rng, scheme, 2, 128)
    codes = values.codes.copy()
    codes[1, 5] = 100 if codes.dtype == np.uint8 else 100  # beyond every 4-bit range
    with pytest.raises(KernelError, match="outside"):
        pack(values._replace(codes=codes), scheme)


def test_a_scale_the_stored_type_cannot_hold_is_refused():
    scheme = Scheme.ggml("Q8_0")
    values = QuantValues(np.zeros((1, 32), np.int8), np.array([[1e6]], np.float32))
    with pytest.raises(BadWeightsError):
        pack(values, scheme)
