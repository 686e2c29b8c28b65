"""Class 2 of issue 18: nothing is read from outside the checkpoint directory.

An index naming ``../x`` or an absolute path, and any file of the checkpoint that is a symbolic
link leaving it, are refused by name, before a byte is read; the files outside are real, valid
shards, so following them would have "worked". A Hugging Face cache snapshot, whose files link
into the repository's ``blobs/``, still opens.
"""

from __future__ import annotations

import json
import shutil

import pytest

from phi_quant.model.source import open_model
from phi_quant.testing.factory import copy_checkpoint

SHARD2 = "model-00002-of-00002.safetensors"


@pytest.fixture
def ckpt(tmp_path):
    return copy_checkpoint("phi3-mini", tmp_path / "ck")


def _point_index(ckpt, shard_name):
    path = ckpt / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    index["weight_map"] = {k: (shard_name if v == SHARD2 else v) for k, v in index["weight_map"].items()}
    path.write_text(json.dumps(index))


@pytest.mark.parametrize("where", ["parent", "absolute", "dotdot-inside"])
def test_index_naming_a_path_outside_is_refused(ckpt, tmp_path, quantize_refuses, where):
    outside = tmp_path / "outside.safetensors"
    shutil.move(ckpt / SHARD2, outside)  # a valid shard: following the name would succeed
    name = {"parent": "../outside.safetensors", "absolute": str(outside),
            "dotdot-inside": "sub/../../outside.safetensors"}[where]
    _point_index(ckpt, name)
    quantize_refuses(ckpt, f"lists the shard {name!r}, a path outside the checkpoint directory")
    assert outside.is_file()


@pytest.mark.parametrize("name", [SHARD2, "tokenizer.json", "config.json", "generation_config.json",
                                  "model.safetensors.index.json"])
def test_a_link_out_of_the_checkpoint_is_refused(ckpt, tmp_path, quantize_refuses, name):
    outside = tmp_path / f"private-{name}"
    shutil.move(ckpt / name, outside)
    (ckpt / name).symlink_to(outside)
    quantize_refuses(ckpt, repr(name), f"links to {outside}", "outside the checkpoint directory")


def test_a_link_out_in_a_checkpoint_without_index(tmp_path, quantize_refuses):
    ckpt = copy_checkpoint("phi3-mini", tmp_path / "ck")
    (ckpt / "model.safetensors.index.json").unlink()
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(ckpt / SHARD2, outside)
    (ckpt / "extra.safetensors").symlink_to(outside)
    quantize_refuses(ckpt, "'extra.safetensors'", "outside the checkpoint directory")


def test_a_link_loop_is_refused(ckpt, quantize_refuses):
    (ckpt / SHARD2).unlink()
    (ckpt / SHARD2).symlink_to(ckpt / SHARD2)
    quantize_refuses(ckpt, repr(SHARD2), "cannot be resolved")


def test_links_inside_the_checkpoint_are_fine(ckpt):
    (ckpt / "real").mkdir()
    shutil.move(ckpt / SHARD2, ckpt / "real" / SHARD2)
    (ckpt / SHARD2).symlink_to(ckpt / "real" / SHARD2)
    with open_model(ckpt) as src:
        assert src.config.num_layers == 2


def test_a_hub_cache_snapshot_with_blob_links_opens(tmp_path):
    """huggingface_hub stores files once under blobs/ and links each snapshot's names to them."""
    src = copy_checkpoint("phi3-mini", tmp_path / "src")
    repo = tmp_path / "hub" / "models--microsoft--tiny-phi"
    snapshot, blobs = repo / "snapshots" / "0123abcd", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for f in src.iterdir():
        blob = blobs / f"blob-{f.name}"
        shutil.move(f, blob)
        (snapshot / f.name).symlink_to(f"../../blobs/{blob.name}")
    with open_model(snapshot) as source:
        assert len(source.tensor_infos()) == 15
