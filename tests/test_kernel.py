"""The C kernel equals the numpy reference bit for bit; the wrapper refuses what C must not see.

Every scheme x source dtype x thread count runs on random and edge-case tensors; outputs are
compared as raw bytes (so -0.0 vs +0.0 and NaN payloads count). Vendor exactness lives in
test_kernel_vendors.py, the fuzz loop in test_kernel_fuzz.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import phi_quant.quant as q
from phi_quant.errors import BadWeightsError, KernelError, PhiQuantError, UnsupportedPrecisionError
from phi_quant.quant import _native, cases
from phi_quant.quant import reference as R

pytestmark = pytest.mark.skipif(not q.native_available(), reason="phi_quant._kernel is not built")

THREADS = (1, 2, 3)


def same_bytes(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def run_both(native_call, ref_call):
    """Native result and reference result, or the exception type each raised."""
    out = []
    for call in (native_call, ref_call):
        try:
            out.append(call())
        except PhiQuantError as exc:
            out.append(type(exc))
    return out


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(2024)
    return {"random": cases.random_weight(rng, 37, 512), "edge": cases.edge_weight(24, 512),
            "huge": cases.huge_weight(512)}


def _ref_only(monkeypatch):
    monkeypatch.setattr(_native, "lib", None)
    monkeypatch.setattr(_native, "_warned", True)


def both_paths(monkeypatch, fn):
    """fn() through C, then through the reference (compiled module hidden)."""
    native = None
    try:
        native = fn()
    except PhiQuantError as exc:
        native = type(exc)
    with monkeypatch.context() as m:
        _ref_only(m)
        try:
            ref = fn()
        except PhiQuantError as exc:
            ref = type(exc)
    return native, ref


def assert_same(native, ref):
    if isinstance(native, type) or isinstance(ref, type):
        assert native is ref, (native, ref)
        return
    if isinstance(native, tuple):
        assert len(native) == len(ref)
        for a, b in zip(native, ref):
            assert same_bytes(a, b)
    else:
        assert same_bytes(native, ref)


@pytest.mark.parametrize("kind", ["random", "edge", "huge"])
@pytest.mark.parametrize("src", cases.SRC_DTYPES)
def test_ggml_matches_reference(monkeypatch, weights, kind, src):
    w = cases.encode(weights[kind], src)
    for scheme in q.GGML_SCHEMES:
        for threads in THREADS:
            native, ref = both_paths(monkeypatch, lambda: q.ggml_quantize(w, scheme, src_dtype=src, threads=threads))
            assert_same(native, ref)


@pytest.mark.parametrize("kind", ["random", "edge", "huge"])
@pytest.mark.parametrize("src", cases.SRC_DTYPES)
def test_matmulnbits_matches_reference(monkeypatch, weights, kind, src):
    full = cases.encode(weights[kind], src)
    for bits in (4, 8):
        for symmetric in (True, False):
            for block in q.MATMULNBITS_BLOCK_SIZES:
                for scale_dtype in ("f32", "f16"):
                    w = full[:, : 512 - 18] if block >= 32 else full  # K not a multiple: padded last block
                    for threads in THREADS:
                        native, ref = both_paths(monkeypatch, lambda: q.matmulnbits_quantize(
                            w, bits, block, symmetric, src_dtype=src, scale_dtype=scale_dtype, threads=threads))
                        assert_same(native, ref)


@pytest.mark.parametrize("kind", ["random", "edge", "huge"])
@pytest.mark.parametrize("src", cases.SRC_DTYPES)
def test_mlx_matches_reference(monkeypatch, weights, kind, src):
    w = cases.encode(weights[kind], src)
    for bits in (4, 8):
        for group in q.MLX_GROUP_SIZES:
            for scale_dtype in (None, "f32", "f16", "bf16"):
                for threads in THREADS:
                    native, ref = both_paths(monkeypatch, lambda: q.mlx_quantize(
                        w, bits, group, src_dtype=src, scale_dtype=scale_dtype, threads=threads))
                    assert_same(native, ref)


@pytest.mark.parametrize("kind", ["random", "edge", "huge"])
@pytest.mark.parametrize("src", cases.SRC_DTYPES)
def test_nncf_matches_reference(monkeypatch, weights, kind, src):
    w = cases.encode(weights[kind], src)
    for mode in q.NNCF_MODES:
        for group in (None, 16, 64, 128, 256):
            for scale_dtype in ("f16", "f32"):
                for threads in THREADS:
                    native, ref = both_paths(monkeypatch, lambda: tuple(q.nncf_compress(
                        w, mode, group, src_dtype=src, scale_dtype=scale_dtype, threads=threads)))
                    assert_same(native, ref)


@pytest.mark.parametrize("src", cases.SRC_DTYPES)
def test_conversions_match_numpy(monkeypatch, weights, src):
    w = cases.encode(np.concatenate([weights["random"], weights["edge"], weights["huge"]], axis=0), src)
    special = cases.encode(np.float32([[np.nan, -np.nan, np.inf, -np.inf, 65519.0, 65520.0, 1e-8, -6.1e-5]]), src)
    for arr in (w, special, w[3]):  # 2-D, specials, 1-D (norm weights)
        x = R.decode(arr, src)
        with np.errstate(over="ignore"):
            expect16 = x.astype(np.float16)
        for threads in THREADS:
            assert same_bytes(q.to_float16(arr, src, threads=threads), expect16)
            assert same_bytes(q.to_bfloat16(arr, src, threads=threads), R.f32_to_bf16_bits(x))
        assert same_bytes(q.to_float32(arr, src), x)
        native, ref = both_paths(monkeypatch, lambda: (q.to_float16(arr, src), q.to_bfloat16(arr, src)))
        assert_same(native, ref)


def test_strided_rows_are_read_in_place():
    """A row slice or a column block of a bigger tensor quantizes like its copy."""
    rng = np.random.default_rng(3)
    big = cases.encode(cases.random_weight(rng, 40, 1024), "bf16")
    views = (big[5:31], big[:, 256:768], big[::3, :512])
    assert [v.flags.c_contiguous for v in views] == [True, False, False]
    for view in views:
        copy = np.ascontiguousarray(view)
        assert same_bytes(q.ggml_quantize(view, "Q4_0", src_dtype="bf16"), q.ggml_quantize(copy, "Q4_0", src_dtype="bf16"))
        assert_same(q.matmulnbits_quantize(view, 4, 32, src_dtype="bf16"), q.matmulnbits_quantize(copy, 4, 32, src_dtype="bf16"))
        assert_same(q.mlx_quantize(view, 4, 64, src_dtype="bf16"), q.mlx_quantize(copy, 4, 64, src_dtype="bf16"))
        assert_same(tuple(q.nncf_compress(view, "int4_asym", 128, src_dtype="bf16")),
                    tuple(q.nncf_compress(copy, "int4_asym", 128, src_dtype="bf16")))
    # elements not adjacent inside a row: the wrapper copies, the answer is the same
    f32 = cases.random_weight(rng, 8, 512)
    assert same_bytes(q.ggml_quantize(f32.T.copy().T, "Q8_0"), q.ggml_quantize(np.ascontiguousarray(f32), "Q8_0"))
    assert same_bytes(q.ggml_quantize(np.asfortranarray(f32), "Q8_0"), q.ggml_quantize(f32, "Q8_0"))


def test_concurrent_python_threads_get_their_own_answers():
    """cffi releases the GIL around the C call: callers in threads must not disturb each other."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(8)
    ws = [cases.encode(cases.random_weight(rng, 64, 1024), "bf16") for _ in range(6)]
    serial = [q.ggml_quantize(w, "Q4_0", src_dtype="bf16", threads=1) for w in ws]
    with ThreadPoolExecutor(max_workers=3) as pool:
        parallel = list(pool.map(lambda w: q.ggml_quantize(w, "Q4_0", src_dtype="bf16", threads=2), ws))
    assert all(same_bytes(a, b) for a, b in zip(serial, parallel))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("src", cases.SRC_DTYPES)
def test_nonfinite_names_the_tensor(monkeypatch, value, src):
    w = cases.random_weight(np.random.default_rng(1), 12, 256)
    w[9, 200] = value
    w[4, 17] = value  # the first bad row is reported, whichever thread sees it
    raw = cases.encode(w, src)
    calls = [
        lambda: q.ggml_quantize(raw, "Q4_0", src_dtype=src, name="blk.3.ffn_up", threads=3),
        lambda: q.ggml_quantize(raw, "Q4_1", src_dtype=src, name="blk.3.ffn_up", threads=2),
        lambda: q.ggml_quantize(raw, "Q8_0", src_dtype=src, name="blk.3.ffn_up"),
        lambda: q.matmulnbits_quantize(raw[:, :250], 4, 128, src_dtype=src, name="blk.3.ffn_up", threads=4),
        lambda: q.mlx_quantize(raw, 8, 32, src_dtype=src, name="blk.3.ffn_up", threads=2),
        lambda: q.nncf_compress(raw, "int8_asym", None, src_dtype=src, name="blk.3.ffn_up", threads=5),
    ]
    for call in calls:
        for path in ("native", "reference"):
            with monkeypatch.context() as m:
                if path == "reference":
                    _ref_only(m)
                with pytest.raises(BadWeightsError, match=r"blk\.3\.ffn_up.*row 4"):
                    call()


def test_scale_overflow_is_a_clear_error_not_inf():
    w = cases.huge_weight(256)
    with pytest.raises(BadWeightsError, match="overflows f16"):
        q.ggml_quantize(w, "Q8_0", name="x")
    with pytest.raises(BadWeightsError, match="overflows f16"):
        q.matmulnbits_quantize(w, 4, 32, scale_dtype="f16", name="x")
    with pytest.raises(BadWeightsError, match="overflows f16"):
        q.mlx_quantize(w, 4, 64, scale_dtype="f16", name="x")
    B, scales, zp = q.matmulnbits_quantize(w, 4, 32, scale_dtype="f32")  # float32 scales hold it
    assert np.isfinite(scales).all()
    assert np.isfinite(q.mlx_quantize(w, 4, 64)[1]).all()
    m_only = np.zeros((2, 64), np.float32)
    m_only[1] = -7e4  # Q4_1: d = 0 fits, the block minimum m does not
    with pytest.raises(BadWeightsError, match="overflows f16"):
        q.ggml_quantize(m_only, "Q4_1", name="x")
    w[1, 200] = np.nan  # NaN/Inf is reported first, even after an overflowing row
    for threads in (1, 2):
        with pytest.raises(BadWeightsError, match="NaN or Inf.*row 1"):
            q.ggml_quantize(w, "Q8_0", name="x", threads=threads)


def test_shapes_the_format_cannot_express_are_refused():
    w = np.zeros((4, 200), np.float32)
    with pytest.raises(UnsupportedPrecisionError, match="K=200.*32"):
        q.ggml_quantize(w, "Q4_0", name="t")
    with pytest.raises(UnsupportedPrecisionError, match="K=200.*64"):
        q.mlx_quantize(w, 4, 64, name="t")
    with pytest.raises(UnsupportedPrecisionError, match="K=200.*128"):
        q.nncf_compress(w, "int4_sym", 128, name="t")
    B, scales, zp = q.matmulnbits_quantize(w, 4, 128)  # MatMulNBits pads instead
    assert B.shape == (4, 2, 64) and scales.shape == (4, 2) and zp.shape == (4, 1)
    assert q.nncf_compress(w, "int4_sym", None).weight.shape == (4, 200)


@pytest.mark.parametrize("bad", [
    lambda: q.ggml_quantize(np.zeros((4, 64), np.float64), "Q4_0"),
    lambda: q.ggml_quantize(np.zeros((4, 64), np.uint16), "Q4_0"),  # bf16 must be said
    lambda: q.ggml_quantize(np.zeros((4, 64), np.float32), "Q4_0", src_dtype="bf16"),
    lambda: q.ggml_quantize(np.zeros(64, np.float32), "Q4_0"),
    lambda: q.ggml_quantize(np.zeros((0, 64), np.float32), "Q4_0"),
    lambda: q.ggml_quantize(np.zeros((4, 64), np.float32), "Q5_K"),
    lambda: q.ggml_quantize([[0.0] * 64], "Q4_0"),
    lambda: q.matmulnbits_quantize(np.zeros((4, 64), np.float32), 3, 32),
    lambda: q.matmulnbits_quantize(np.zeros((4, 64), np.float32), 4, 48),
    lambda: q.matmulnbits_quantize(np.zeros((4, 64), np.float32), 4, 512),
    lambda: q.matmulnbits_quantize(np.zeros((4, 64), np.float32), 4, 32, scale_dtype="bf16"),
    lambda: q.mlx_quantize(np.zeros((4, 256), np.float32), 4, 256),
    lambda: q.nncf_compress(np.zeros((4, 64), np.float32), "int3_sym", 32),
    lambda: q.nncf_compress(np.zeros((4, 64), np.float32), "int4_sym", 8),
    lambda: q.ggml_quantize(np.zeros((4, 64), np.float32), "Q4_0", threads=0),
    lambda: q.ggml_quantize(np.zeros((4, 64), np.float32), "Q4_0", src_dtype="int8"),
])
def test_bad_arguments_raise_before_c(bad):
    with pytest.raises((KernelError, UnsupportedPrecisionError)):
        bad()


def test_fallback_warns_once_and_still_answers(monkeypatch):
    w = cases.random_weight(np.random.default_rng(0), 4, 128)
    expect = q.ggml_quantize(w, "Q4_0")
    monkeypatch.setattr(_native, "lib", None)
    monkeypatch.setattr(_native, "_warned", False)
    with pytest.warns(q.KernelFallbackWarning, match="numpy reference"):
        got = q.ggml_quantize(w, "Q4_0")
    assert same_bytes(got, expect)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q.mlx_quantize(w, 4, 64)  # warned already: silent now


# ----------------------------------------------------------------------------- dequantize


def _rows_blocks(a, n, blocks):
    return np.asarray(a, np.float32).reshape(n, blocks, -1)


@pytest.mark.parametrize("src", cases.SRC_DTYPES)
def test_dequantize_error_within_theoretical_bound(src):
    """|w - deq(q(w))| per block <= c * |scale| (+ the float16 rounding of scale and min).

    c = 1/2 where the grid's ends are the block's ends (Q8_0, Q4_1) and 1 where one end is
    clipped or shifted by the zero point's rounding (Q4_0, symmetric -2^(b-1) grids, asymmetric
    grids widened to include 0, mlx's snapped edge).
    """
    rng = np.random.default_rng(11)
    raw = cases.encode(cases.random_weight(rng, 16, 512), src)
    w = R.decode(raw, src)
    n, k = w.shape
    f16_eps = 2.0 ** -11

    for scheme, c in (("Q8_0", 0.5), ("Q4_1", 0.5), ("Q4_0", 1.0)):
        blocks = q.ggml_quantize(raw, scheme, src_dtype=src)
        err = np.abs(q.ggml_dequantize(blocks, scheme, k) - w).reshape(n, k // 32, 32).max(-1)
        b = blocks.reshape(n, k // 32, -1)
        d = np.abs(b[..., :2].copy().view(np.float16).astype(np.float32))[..., 0]
        levels = 127 if scheme == "Q8_0" else 15
        bound = c * d + levels * d * f16_eps
        if scheme == "Q4_1":
            bound += np.abs(b[..., 2:4].copy().view(np.float16).astype(np.float32))[..., 0] * f16_eps
        assert (err <= bound * (1 + 1e-6) + 1e-30).all(), scheme

    for bits in (4, 8):
        for symmetric in (True, False):
            for sd in ("f32", "f16"):
                B, s, z = q.matmulnbits_quantize(raw, bits, 64, symmetric, src_dtype=src, scale_dtype=sd)
                deq = q.matmulnbits_dequantize(B, s, z, bits=bits, block_size=64, k=k)
                err = np.abs(deq - w).reshape(n, k // 64, 64).max(-1)
                sa = np.abs(s.astype(np.float32))
                bound = sa * (1 + (2 ** bits) * (f16_eps if sd == "f16" else 2.0 ** -23))
                assert (err <= bound * (1 + 1e-6)).all(), (bits, symmetric, sd)

        wq, s, b = q.mlx_quantize(raw, bits, 64, src_dtype=src)
        deq = q.mlx_dequantize(wq, s, b, bits=bits, group_size=64, src_dtype=src)
        err = np.abs(deq - w).reshape(n, k // 64, 64).max(-1)
        sa = np.abs(R.stored_to_f32(s, src))
        ba = np.abs(R.stored_to_f32(b, src))
        rel = {"f32": 2.0 ** -23, "f16": f16_eps, "bf16": 2.0 ** -8}[src]
        assert (err <= sa * (1 + (2 ** bits) * rel) + ba * rel + 1e-30).all(), bits

        for mode in (f"int{bits}_sym", f"int{bits}_asym"):
            c = q.nncf_compress(raw, mode, 128, src_dtype=src)
            err = np.abs(q.nncf_dequantize(c) - w).reshape(n, k // 128, 128).max(-1)
            sa = np.abs(c.scale.astype(np.float32))[..., 0]
            assert (err <= sa * (1 + (2 ** bits) * f16_eps) * (1 + 1e-6)).all(), mode


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_ov_4bit_packing_in_c_matches_the_reference(dtype):
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 31, 32, 33, 63, 64, 65, 1000, 4097):
        values = rng.integers(0, 256, n).astype(np.uint8).view(dtype)  # any byte: only its low nibble counts
        assert q.pack_4bit(values).tobytes() == R.pack_u4(values).tobytes(), n


@pytest.mark.parametrize("src", ["f32", "bf16"])
def test_nncf_packed_output_is_pack_4bit_of_the_quants(src):
    rng = np.random.default_rng(5)
    w = cases.encode(cases.random_weight(rng, 9, 1024), src)
    for mode in ("int4_sym", "int4_asym"):
        for group in (16, 128, None):  # None: per channel, a row longer than the kernel's slice
            for threads in (1, 2):
                plain = q.nncf_compress(w, mode, group, src_dtype=src, threads=threads)
                packed = q.nncf_compress(w, mode, group, src_dtype=src, threads=threads, packed=True)
                assert packed.weight.tobytes() == q.pack_4bit(plain.weight).tobytes(), (mode, group)
                assert packed.scale.tobytes() == plain.scale.tobytes()
                assert (packed.zero_point is None) == (plain.zero_point is None)
                if plain.zero_point is not None:
                    assert np.array_equal(packed.zero_point, plain.zero_point)
    bad = np.array(w, copy=True)
    bad[4, 300] = 0x7FC0 if src == "bf16" else np.nan
    with pytest.raises(BadWeightsError, match="w4.*row 4"):
        q.nncf_compress(bad, "int4_asym", 128, src_dtype=src, name="w4", packed=True)
    with pytest.raises(UnsupportedPrecisionError):
        q.nncf_compress(w, "int8_asym", None, src_dtype=src, packed=True)


def test_ov_4bit_packing_round_trips():
    values = np.arange(-8, 8, dtype=np.int8).repeat(3)[:45]
    packed = q.pack_4bit(values)
    assert packed.shape == (23,) and packed[0] == ((-8 & 0xF) | ((-8 & 0xF) << 4))
    assert np.array_equal(q.unpack_4bit(packed, 45, signed=True), values)
    u = np.arange(16, dtype=np.uint8)
    assert np.array_equal(q.pack_4bit(u)[:2], [0x10, 0x32])  # element 0 in the low nibble
