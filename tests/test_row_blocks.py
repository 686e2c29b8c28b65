"""SourceTensor.row_blocks: the same bytes as raw(), one mapping per block; pipeline.ahead keeps order."""

from __future__ import annotations

import mmap
import threading

import numpy as np
import pytest

from phi_quant.model.source import open_model
from phi_quant.pipeline import ahead
from phi_quant.testing.factory import make_checkpoint


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_row_blocks_hold_the_tensors_bytes(tmp_path, dtype):
    with open_model(make_checkpoint("phi4", tmp_path, dtype=dtype)) as src:
        for t in src.tensors(split=True):  # split: q/k/v and gate/up start mid-tensor
            raw = np.asarray(t.raw())
            for rows in (1, 7, 64, 10**6):
                blocks = list(t.row_blocks(rows))
                if raw.ndim == 1:
                    assert len(blocks) == 1 and np.array_equal(blocks[0][1], raw)
                    continue
                assert [r0 for r0, _ in blocks] == list(range(0, raw.shape[0], rows))
                got = np.concatenate([b for _, b in blocks])
                assert got.dtype == raw.dtype and got.tobytes() == raw.tobytes(), (t.name, rows)
                assert not got.flags.writeable or not blocks[0][1].flags.writeable


def _buffer(a):
    while isinstance(a, np.ndarray):
        a = a.base
    return a.obj if isinstance(a, memoryview) else a


def test_each_block_is_a_mapping_of_its_own(tmp_path):
    with open_model(make_checkpoint("phi4", tmp_path)) as src:
        t = src.tensor("embed")
        bases = [_buffer(b) for _, b in t.row_blocks(100)]
    assert len(bases) > 2 and all(isinstance(m, mmap.mmap) for m in bases)
    assert len({id(m) for m in bases}) == len(bases)
    assert all(len(m) < t.nbytes for m in bases)  # a block's rows, not the tensor


def test_ahead_keeps_order_and_stays_bounded():
    produced = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    seen = []
    for i in ahead(items(), depth=2):
        assert len(produced) - len(seen) <= 4  # queued (2) + one being handed over + one being made
        seen.append(i)
    assert seen == list(range(50))


def test_ahead_reraises_and_stops_the_producer():
    closed = threading.Event()

    def failing():
        yield 1
        raise ValueError("bad block")

    with pytest.raises(ValueError, match="bad block"):
        list(ahead(failing()))

    def endless():
        try:
            while True:
                yield 0
        finally:
            closed.set()

    for _ in ahead(endless()):
        break
    assert closed.is_set()  # the generator was closed when the consumer stopped
