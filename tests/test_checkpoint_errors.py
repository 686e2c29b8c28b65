"""Every way a checkpoint can be broken gives one clear error that says what to do next."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from phi_quant.errors import BadWeightsError, CheckpointError, UnsupportedModelError
from phi_quant.model.checks import check_finite
from phi_quant.model.safetensors_io import read_header
from phi_quant.model.source import open_model
from phi_quant.testing.factory import add_tensor, cached_checkpoint, copy_checkpoint, edit_config, make_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    """A private, writable copy of the tiny phi3-mini checkpoint (2 shards)."""
    return copy_checkpoint("phi3-mini", tmp_path / "ck")


def _shard(path, k=1):
    return path / f"model-0000{k}-of-00002.safetensors"




def test_truncated_shard(ckpt):
    f = _shard(ckpt, 2)
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"truncated.*Re-download"):
        open_model(ckpt)


def test_file_shorter_than_its_header(ckpt):
    _shard(ckpt).write_bytes(b"\x01\x02\x03")
    with pytest.raises(CheckpointError, match="truncated"):
        open_model(ckpt)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: struct.pack("<Q", 10**9) + b[8:],  # header length beyond the file
        lambda b: b[:8] + b"{not json" + b[17:],  # header bytes are not JSON
        lambda b: b[:8] + b"\xff\xfe" + b[10:],  # not UTF-8
    ],
    ids=["length", "json", "utf8"],
)
def test_corrupt_header(ckpt, mangle):
    f = _shard(ckpt)
    f.write_bytes(mangle(f.read_bytes()))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        open_model(ckpt)


def _rewrite_header(f, edit):
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    f.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n :])


def test_offsets_that_disagree_with_the_shape(ckpt):
    def edit(h):
        h["model.embed_tokens.weight"]["shape"] = [512, 255]

    _rewrite_header(_shard(ckpt), edit)
    with pytest.raises(CheckpointError, match=r"model.embed_tokens.weight.*spans bytes"):
        open_model(ckpt)


def test_weights_in_an_unsupported_dtype(ckpt):
    def edit(h):
        h["model.norm.weight"]["dtype"] = "I16"  # same size as BF16: offsets stay valid

    _rewrite_header(_shard(ckpt, 2), edit)
    assert read_header(_shard(ckpt, 2)).entries["model.norm.weight"].dtype == "I16"
    with pytest.raises(CheckpointError, match=r"model.norm.weight is stored as I16.*F32, F16 and BF16"):
        open_model(ckpt)


def test_extra_tensors_of_other_dtypes_are_ignored(ckpt):
    """Buffers a model does not use (an int64 table here) are validated but not streamed."""
    add_tensor(ckpt, "model.layers.0.self_attn.rotary_emb.positions", "I64", (2,), bytes(16),
               shard="model-00001-of-00002.safetensors")
    with open_model(ckpt) as src:
        assert len(src.tensor_infos()) == 15


def test_unknown_dtype_name_is_a_corrupt_header(ckpt):
    _rewrite_header(_shard(ckpt, 2), lambda h: h["model.norm.weight"].update(dtype="F99"))
    with pytest.raises(CheckpointError, match="unknown dtype 'F99'"):
        open_model(ckpt)


def test_bad_config_json(ckpt):
    (ckpt / "config.json").write_text('{"architectures": ["Phi3ForCausalLM"],')
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON"):
        open_model(ckpt)


def test_bad_index_json(ckpt):
    (ckpt / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(CheckpointError, match="must hold a JSON object, found a list"):
        open_model(ckpt)


def test_missing_shard(ckpt):
    _shard(ckpt, 2).unlink()
    with pytest.raises(CheckpointError, match=r"shard model-00002-of-00002.safetensors .* missing.*fetch it again"):
        open_model(ckpt)


def test_index_references_a_tensor_its_shard_lacks(ckpt):
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.down_proj.weight"] = "model-00001-of-00002.safetensors"
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model.layers.9.mlp.down_proj.weight"):
        open_model(ckpt)


def test_missing_tensor_and_wrong_shape(ckpt):
    edit_config(ckpt, tie_word_embeddings=False, intermediate_size=256)
    with pytest.raises(CheckpointError, match=r"gate_up_proj.weight has shape \[1024, 256\] but config.json implies \[512, 256\]"):
        open_model(ckpt)


def test_untied_config_without_lm_head(tmp_path):
    path = copy_checkpoint("phi4-mini", tmp_path / "ck", tie_word_embeddings=False)
    with pytest.raises(CheckpointError, match=r"lm_head.weight is missing .*tie_word_embeddings=false"):
        open_model(path)


def test_no_weights_at_all(ckpt):
    for f in ckpt.glob("model*"):
        f.unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        open_model(ckpt)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "consolidated.pt"])
def test_pickle_checkpoints_are_refused_without_unpickling(ckpt, name, tmp_path):
    for f in ckpt.glob("model*"):
        f.unlink()
    # A pickle that would run code if it were ever loaded.
    marker = tmp_path / "pwned"
    (ckpt / name).write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    for target in (ckpt, ckpt / name):
        with pytest.raises(CheckpointError, match=r"pickled PyTorch checkpoint.*never unpickles.*safetensors"):
            open_model(target)
    assert not marker.exists()


@pytest.mark.parametrize(
    "arch, model_type",
    [("Phi3SmallForCausalLM", "phi3small"), ("Phi3VForCausalLM", "phi3_v"), ("PhiForCausalLM", "phi"),
     ("LlamaForCausalLM", "llama")],
)
def test_other_architectures_are_refused_by_name(ckpt, arch, model_type):
    edit_config(ckpt, architectures=[arch], model_type=model_type)
    with pytest.raises(UnsupportedModelError) as e:
        open_model(ckpt)
    assert arch in str(e.value) and "Supported: Phi3ForCausalLM" in str(e.value)


def test_split_projection_checkpoints_are_refused(ckpt, tmp_path):
    """A Llama-style checkpoint mislabeled as Phi3 (separate q/k/v) is named as such."""
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    for layer in (0, 1):
        fused, split = (f"model.layers.{layer}.self_attn.{p}_proj.weight" for p in ("qkv", "q"))
        shard = index["weight_map"].pop(fused)
        index["weight_map"][split] = shard
        _rewrite_header(ckpt / shard, lambda h: h.update({split: h.pop(fused)}))
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedModelError, match="fused qkv_proj"):
        open_model(ckpt)


def test_not_a_directory_or_missing(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_model(tmp_path / "nope" / "deeper" / "x")
    with pytest.raises(CheckpointError, match="no config.json"):
        open_model(tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="pass the checkpoint directory"):
        open_model(tmp_path / "weights.safetensors")


def test_hub_id_while_offline_says_how_to_pass_a_directory(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(**kwargs):
        assert kwargs["repo_id"] == "microsoft/Phi-4-mini-instruct"
        assert "*.safetensors" in kwargs["allow_patterns"] and not any(".bin" in p for p in kwargs["allow_patterns"])
        raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"microsoft/Phi-4-mini-instruct.*local directory"):
        open_model("microsoft/Phi-4-mini-instruct")


def test_hub_download_goes_through_snapshot_download(monkeypatch, tmp_path):
    import huggingface_hub

    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return str(cached_checkpoint("phi4"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.chdir(tmp_path)
    src = open_model("someone/tiny-phi4", revision="abc123")
    assert seen["revision"] == "abc123" and src.config.is_gqa


def test_nan_and_inf_weights_are_named(tmp_path):
    path = make_checkpoint("phi4", tmp_path / "ck", num_shards=1)
    name = "model.layers.1.mlp.down_proj.weight"
    offset = read_header(path / "model.safetensors").entries[name].offset
    data = bytearray((path / "model.safetensors").read_bytes())
    data[offset + 2 * 77 : offset + 2 * 78] = np.array([0x7FC0], np.uint16).tobytes()  # bf16 NaN
    (path / "model.safetensors").write_bytes(bytes(data))
    with open_model(path) as src:
        for other in src.tensors(split=True):
            if other.name != name:
                check_finite(other)
        with pytest.raises(BadWeightsError, match=r"model.layers.1.mlp.down_proj.weight holds 1 NaN/Inf"):
            check_finite(src.tensor("down", 1))
    with pytest.raises(BadWeightsError, match="my-tensor"):
        check_finite(np.array([1.0, np.inf], np.float32), "my-tensor")
    with pytest.raises(BadWeightsError):
        check_finite(np.array([1.0, np.nan], np.float16), "h")
    check_finite(np.array([0x7F7F, 0xFF7F], np.uint16), "max-bf16", dtype="bf16")  # largest finite values pass


def test_duplicate_tensors_without_an_index(ckpt):
    (ckpt / "model.safetensors.index.json").unlink()
    shutil.copy(_shard(ckpt, 1), ckpt / "consolidated.safetensors")
    with pytest.raises(CheckpointError, match=r"stored twice .*remove the stray file"):
        open_model(ckpt)
