"""Seeded fuzzing of the kernel wrapper: random shapes, strides, dtypes, values and parameters.

Every call must either return the reference's exact bytes or raise a phi-quant error; a crash
of the C code would take the test process down (pytest's faulthandler then names this test).
"""

from __future__ import annotations

import numpy as np
import pytest

import phi_quant.quant as q
from phi_quant.errors import PhiQuantError
from phi_quant.quant import _native, cases

pytestmark = pytest.mark.skipif(not q.native_available(), reason="phi_quant._kernel is not built")

ROUNDS = 600


def _values(rng, n, k):
    w = (rng.standard_normal((n, k)) * rng.choice([1e-3, 0.05, 3.0])).astype(np.float32)
    roll = rng.random()
    if roll < 0.05:
        w.flat[rng.integers(w.size)] = rng.choice([np.nan, np.inf, -np.inf])
    elif roll < 0.10:
        w[:] = 0
    elif roll < 0.15:
        w *= np.float32(1e-39)
    elif roll < 0.20:
        w *= np.float32(1e36)
    elif roll < 0.25:
        w[:, : k // 2] = np.float32(rng.standard_normal())
    return w


def _layout(rng, a):
    pick = rng.integers(9)
    if pick == 0 and a.shape[0] > 2:
        return a[1:-1]
    if pick == 1 and a.shape[1] > 32:
        return a[:, 16:]
    if pick == 2:
        return a[:, ::2]
    if pick == 3:
        return a[::-1]
    if pick == 4:
        return np.asfortranarray(a)
    if pick == 5:
        b = a.copy()
        b.setflags(write=False)  # like a read-only memory map
        return b
    if pick == 6:
        return a.reshape(-1) if rng.random() < 0.5 else a[None]
    if pick == 7:
        return a[:0]
    return a


def _weight(rng):
    n = int(rng.integers(1, 24))
    k = int(rng.choice([int(rng.integers(1, 600)), 32 * int(rng.integers(1, 20)), 128 * int(rng.integers(1, 5))]))
    w = _values(rng, n, k)
    dtype = rng.choice(["f32", "f16", "bf16", "f64", "i8"], p=[0.3, 0.3, 0.3, 0.05, 0.05])
    if dtype == "f64":
        return w.astype(np.float64), rng.choice([None, "f32"])
    if dtype == "i8":
        with np.errstate(invalid="ignore"):
            return w.astype(np.int8), None
    raw = cases.encode(w, str(dtype))
    src = str(dtype) if rng.random() < 0.85 else rng.choice([None, "f32", "bf16", "fp16", "bogus"])
    return _layout(rng, raw), src


def _call(rng, w, src, threads):
    which = rng.integers(6)
    if which == 0:
        return q.ggml_quantize(w, str(rng.choice(["Q4_0", "Q4_1", "Q8_0", "Q4_K"])), src_dtype=src, threads=threads)
    if which == 1:
        return q.matmulnbits_quantize(w, int(rng.choice([4, 8, 4, 2])), int(rng.choice([16, 32, 64, 128, 256, 48, 512])),
                                      bool(rng.integers(2)), src_dtype=src, scale_dtype=str(rng.choice(["f32", "f16", "bf16"])),
                                      threads=threads)
    if which == 2:
        return q.mlx_quantize(w, int(rng.choice([4, 8, 3])), int(rng.choice([32, 64, 128, 16])), src_dtype=src,
                              scale_dtype=rng.choice([None, "f32", "f16", "bf16"]), threads=threads)
    if which == 3:
        group = rng.choice([None, 16, 32, 64, 128, 256, 100])
        return tuple(q.nncf_compress(w, str(rng.choice(list(q.NNCF_MODES) + ["int2_sym"])),
                                     None if group is None else int(group), src_dtype=src, threads=threads))
    if which == 4:
        return q.to_float16(w, src, threads=threads)
    return q.to_bfloat16(w, src, threads=threads)


def _same(a, b):
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def test_random_calls_succeed_exactly_or_raise_cleanly(monkeypatch):
    rng = np.random.default_rng(20261123)
    outcomes = {"ok": 0, "refused": 0}
    for i in range(ROUNDS):
        w, src = _weight(rng)
        threads = rng.choice([None, 1, 2, 3, 7, 300, 0, -2], p=[0.2, 0.2, 0.2, 0.15, 0.1, 0.05, 0.05, 0.05])
        threads = None if threads is None else int(threads)
        state = rng.bit_generator.state
        try:
            got = _call(rng, w, src, threads)
        except PhiQuantError:
            outcomes["refused"] += 1
            continue
        outcomes["ok"] += 1
        rng.bit_generator.state = state  # replay the same parameters through the numpy reference
        with monkeypatch.context() as m:
            m.setattr(_native, "lib", None)
            m.setattr(_native, "_warned", True)
            expect = _call(rng, w, src, threads)
        assert _same(got, expect), f"round {i}: C and reference differ"
    assert outcomes["ok"] > ROUNDS // 5 and outcomes["refused"] > ROUNDS // 10, outcomes
