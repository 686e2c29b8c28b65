"""Class 3 of issue 18: the byte ranges of a safetensors file tile its data section exactly.

Two tensors sharing bytes (the same range, or overlapping ones), a gap between tensors, and
bytes after the last tensor are all refused, as the format's reference reader refuses them.
"""

from __future__ import annotations

import pytest

from phi_quant.model.source import open_model
from phi_quant.testing.factory import add_tensor, copy_checkpoint, rewrite_header

SHARD2 = "model-00002-of-00002.safetensors"
NORM, DOWN = "model.norm.weight", "model.layers.1.mlp.down_proj.weight"


@pytest.fixture
def ckpt(tmp_path):
    return copy_checkpoint("phi3-mini", tmp_path / "ck")


def _offsets(ckpt, name):
    import json

    blob = (ckpt / SHARD2).read_bytes()
    return json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])[name]["data_offsets"]


@pytest.mark.parametrize("part", ["same", "half"])
def test_a_second_tensor_on_another_ones_bytes(ckpt, quantize_refuses, part):
    begin, end = _offsets(ckpt, DOWN)
    span = [begin, end] if part == "same" else [begin, begin + (end - begin) // 2]
    # a second tensor pointing at (part of) down_proj's bytes
    rewrite_header(ckpt / SHARD2, lambda h: h.__setitem__("model.layers.1.extra.weight", {
        "dtype": "BF16", "shape": [(span[1] - span[0]) // 2], "data_offsets": span}))
    quantize_refuses(ckpt, SHARD2, "overlap", "forbids it")


def test_overlapping_ranges(ckpt, quantize_refuses):
    begin, end = _offsets(ckpt, NORM)  # norm is 256 bf16 = 512 bytes: shift its range by 2 bytes into the next
    rewrite_header(ckpt / SHARD2, lambda h: h[NORM].__setitem__("data_offsets", [begin + 2, end + 2]))
    quantize_refuses(ckpt, SHARD2, "overlap")


def test_a_gap_between_tensors(ckpt, quantize_refuses):
    add_tensor(ckpt, "model.rotary_emb.inv_freq", "F32", (2,), bytes(8), shard=SHARD2)
    rewrite_header(ckpt / SHARD2, lambda h: h["model.rotary_emb.inv_freq"].__setitem__(
        "data_offsets", [x + 8 for x in h["model.rotary_emb.inv_freq"]["data_offsets"]]), append=bytes(8))
    quantize_refuses(ckpt, SHARD2, "belong to no tensor")


def test_bytes_after_the_last_tensor(ckpt, quantize_refuses):
    with open(ckpt / SHARD2, "ab") as f:
        f.write(b"\x00" * 16)
    quantize_refuses(ckpt, SHARD2, "the data section has", "its tensors cover")


def test_an_exact_tiling_in_any_header_order_is_fine(ckpt):
    """Header order is free (the reference sorts by offset); only the ranges matter."""
    def reverse(h):
        items = list(h.items())
        h.clear()
        h.update(reversed(items))

    rewrite_header(ckpt / SHARD2, reverse)
    with open_model(ckpt) as src:
        assert src.tensor("final_norm").shape == (256,)
