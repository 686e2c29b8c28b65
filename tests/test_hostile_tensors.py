"""Class 11 of issue 18: the checkpoint and its config must agree; nothing is dropped silently.

A checkpoint with a layer more than ``num_hidden_layers`` used to convert with that layer
dropped. Tensors the architecture does not read are refused by name, except the buffers some
exporters save that no computation needs (rotary ``inv_freq`` and cos/sin tables) and a copy of
the embedding as ``lm_head.weight`` in a tied model.
"""

from __future__ import annotations

import pytest

from phi_quant.model.safetensors_io import read_header
from phi_quant.model.source import open_model
from phi_quant.testing.factory import add_tensor, copy_checkpoint, edit_config

SHARD2 = "model-00002-of-00002.safetensors"


@pytest.fixture
def ckpt(tmp_path):
    return copy_checkpoint("phi3-mini", tmp_path / "ck")


def _copy_layer(ckpt, src: int, dst: int) -> None:
    """Append layer ``dst`` as a byte copy of layer ``src`` (a real, well-formed extra layer)."""
    for shard in sorted(ckpt.glob("*.safetensors")):
        for name, e in read_header(shard).entries.items():
            if name.startswith(f"model.layers.{src}."):
                with open(shard, "rb") as f:
                    f.seek(e.offset)
                    data = f.read(e.nbytes)
                add_tensor(ckpt, name.replace(f"layers.{src}.", f"layers.{dst}."), "BF16", e.shape, data, shard=SHARD2)


def test_an_extra_layer_is_refused(ckpt, quantize_refuses):
    _copy_layer(ckpt, 1, 2)
    quantize_refuses(ckpt, "holds tensors for 3 layers (indexes 0 to 2) but", "num_hidden_layers=2",
                     "refusing to drop layers silently")


def test_a_missing_middle_layer_is_named(ckpt, quantize_refuses):
    _copy_layer(ckpt, 1, 3)  # layers 0, 1 and 3
    edit_config(ckpt, num_hidden_layers=4)
    quantize_refuses(ckpt, "says num_hidden_layers=4 but the checkpoint has no tensors for layer 2",
                     "it holds 3 layers (indexes 0 to 3)")


def test_an_unknown_tensor_is_refused_by_name(ckpt, quantize_refuses):
    add_tensor(ckpt, "model.layers.0.self_attn.q_proj.lora_A.weight", "BF16", (8, 256), bytes(8 * 256 * 2))
    add_tensor(ckpt, "score.weight", "BF16", (2, 256), bytes(2 * 256 * 2))
    quantize_refuses(ckpt, "holds tensor model.layers.0.self_attn.q_proj.lora_A.weight and 1 more",
                     "Phi3ForCausalLM does not use; converting would drop it silently")


def test_known_buffers_and_a_tied_lm_head_copy_are_accepted(tmp_path):
    ckpt = copy_checkpoint("phi4-mini", tmp_path / "ck")  # tied embeddings
    add_tensor(ckpt, "model.layers.0.self_attn.rotary_emb.inv_freq", "F32", (24,), bytes(96))
    add_tensor(ckpt, "model.rotary_emb.inv_freq", "F32", (24,), bytes(96))
    add_tensor(ckpt, "lm_head.weight", "BF16", (640, 256), bytes(640 * 256 * 2))
    with open_model(ckpt) as src:
        assert [i.name for i in src.tensor_infos()][-1] == "model.norm.weight"
