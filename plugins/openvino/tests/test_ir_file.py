"""The skeleton IR is what ``ov.save_model`` writes, byte for byte, without writing its placeholder weights."""

from __future__ import annotations

import openvino as ov
import pytest

from phi_quant.model.source import open_model
from phi_quant.testing.factory import cached_checkpoint
from phi_quant.types import ExportOptions
from phi_quant_openvino.decoder import build_decoder
from phi_quant_openvino.ir_file import save_skeleton
from phi_quant_openvino.schemes import plan_weights, resolve_options


@pytest.mark.parametrize("variant,precision", [("phi3.5-longrope", "int4"), ("phi4-mini", "int8"), ("phi4", "fp16")])
def test_skeleton_is_save_models_ir(tmp_path, variant, precision):
    with open_model(cached_checkpoint(variant)) as src:
        plan = plan_weights(src.tensor_infos(), resolve_options(ExportOptions(precision=precision)))
        graph = build_decoder(src.config, list(src.tensor_infos()), plan)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir(), theirs.mkdir()
    offsets = save_skeleton(graph.model, ours / "m.xml", graph.bank.slots, set())
    ov.save_model(graph.model, str(theirs / "m.xml"), compress_to_fp16=False)
    assert (ours / "m.xml").read_bytes() == (theirs / "m.xml").read_bytes()

    # save_model wrote each weight's placeholder (zeros + a marker); ours leaves those ranges
    # unwritten for the weights to fill. With the placeholders put in, the files are the same.
    data = bytearray((ours / "m.bin").read_bytes())
    constants = {op.get_friendly_name(): op for op in graph.model.get_ordered_ops() if op.get_type_name() == "Constant"}
    for slot in graph.bank.slots:
        at = offsets[slot.const_name]
        assert not any(data[at : at + slot.nbytes])
        data[at : at + slot.nbytes] = constants[slot.const_name].get_tensor_view().data.tobytes()
    assert bytes(data) == (theirs / "m.bin").read_bytes()
