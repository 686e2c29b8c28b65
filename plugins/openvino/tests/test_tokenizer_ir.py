"""Tokenizer IRs: the transformers-free (native) route writes the vendor converter's exact bytes.

Each route runs in a fresh process over the same checkpoints in the same order, so the graph
nodes' generated names (a per-process counter) line up and the comparison can be byte for byte:
XML (graph and rt_info: chat template, special ids, detokenizer options, versions) and BIN.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phi_quant.model.source import open_model
from phi_quant.testing import factory
from phi_quant_openvino import constants as C
from phi_quant_openvino import tokenizer_ir
from phi_quant_openvino.tokenizer_json import Untranslatable

IR_FILES = (C.TOKENIZER_XML, C.TOKENIZER_BIN, C.DETOKENIZER_XML, C.DETOKENIZER_BIN)
TINY = ("phi3-mini", "phi4", "phi4-mini")  # tokenizers "spm", "phi4", "phi4-mini"

_ROUTE_SCRIPT = """
import json, sys
from pathlib import Path
import openvino as ov
from phi_quant.model.source import open_model
from phi_quant_openvino import tokenizer_ir
route, out = sys.argv[1], Path(sys.argv[2])
build = tokenizer_ir.native_models if route == "native" else tokenizer_ir.vendor_models
for i, checkpoint in enumerate(sys.argv[3:]):
    with open_model(checkpoint) as src:
        tokenizer, detokenizer = build(src.tokenizer_files, src.chat_template)
    (out / str(i)).mkdir(parents=True)
    ov.save_model(tokenizer, str(out / str(i) / "openvino_tokenizer.xml"))
    ov.save_model(detokenizer, str(out / str(i) / "openvino_detokenizer.xml"))
print(json.dumps({"transformers": "transformers" in sys.modules}))
"""


def _run_route(route: str, out: Path, checkpoints: list[Path]) -> dict:
    done = subprocess.run([sys.executable, "-c", _ROUTE_SCRIPT, route, str(out), *map(str, checkpoints)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shaped_phi35(tmp_path_factory) -> Path:
    """The tiny phi3-mini checkpoint carrying bench/scale.py's Phi-3.5-mini-shaped tokenizer files."""
    out = factory.copy_checkpoint("phi3-mini", tmp_path_factory.mktemp("shaped") / "phi3.5")
    factory._write_tokenizer(out, factory._tokenizer_files(factory.FULL_SIZE["phi3.5-mini"]))
    return out


def _assert_same_bytes(native: Path, vendor: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        for f in IR_FILES:
            a, b = (native / str(i) / f).read_bytes(), (vendor / str(i) / f).read_bytes()
            assert a == b, f"{name}: {f} differs between the native and the vendor route"


def test_native_route_writes_the_vendor_bytes(tmp_path, shaped_phi35):
    names = [*TINY, "phi3.5-mini-shaped"]
    checkpoints = [factory.cached_checkpoint(v) for v in TINY] + [shaped_phi35]
    native = _run_route("native", tmp_path / "native", checkpoints)
    _run_route("vendor", tmp_path / "vendor", checkpoints)
    assert native["transformers"] is False
    _assert_same_bytes(tmp_path / "native", tmp_path / "vendor", names)


def test_native_route_writes_the_vendor_bytes_real(tmp_path, real_sources):
    checkpoint = Path(real_sources("smollm2").path)
    _run_route("native", tmp_path / "native", [checkpoint])
    _run_route("vendor", tmp_path / "vendor", [checkpoint])
    _assert_same_bytes(tmp_path / "native", tmp_path / "vendor", ["real:smollm2"])


@pytest.mark.parametrize("variant", TINY)
def test_factory_tokenizers_take_the_native_route(variant):
    with open_model(factory.cached_checkpoint(variant)) as src:
        *_, route = tokenizer_ir.tokenizer_models(src.tokenizer_files, src.chat_template)
    assert route == "native"


def test_native_route_is_on_for_the_installed_converter():
    # Fails after an openvino_tokenizers upgrade: rerun the byte-identity tests, then add the release.
    assert tokenizer_ir.native_route_enabled()


_WRITE_SCRIPT = """
import json, sys
from pathlib import Path
from phi_quant.model.source import open_model
from phi_quant_openvino.tokenizer_ir import write_tokenizer_irs
with open_model(sys.argv[1]) as src:
    names = write_tokenizer_irs(src.tokenizer_files, src.chat_template, Path(sys.argv[2]))
print(json.dumps({"files": names, "transformers": "transformers" in sys.modules, "torch": "torch" in sys.modules}))
"""


def test_conversion_does_not_import_transformers(tmp_path):
    done = subprocess.run([sys.executable, "-c", _WRITE_SCRIPT, str(factory.cached_checkpoint("phi4")), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"files": list(IR_FILES), "transformers": False, "torch": False}
    assert all((tmp_path / f).stat().st_size > 0 for f in IR_FILES)


def test_untranslated_component_falls_back_to_the_vendor_route(tmp_path):
    import openvino as ov
    from tokenizers import Tokenizer

    checkpoint = factory.copy_checkpoint("phi4", tmp_path / "ckpt")
    tj_path = checkpoint / "tokenizer.json"
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    tj["normalizer"] = {"type": "Lowercase"}  # the vendor converts it; the native reader does not
    tj_path.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    with open_model(checkpoint) as src:
        with pytest.raises(Untranslatable, match="Lowercase"):
            tokenizer_ir.native_models(src.tokenizer_files, src.chat_template)
        *_, route = tokenizer_ir.tokenizer_models(src.tokenizer_files, src.chat_template)
        assert route == "vendor"
        out = tmp_path / "out"
        out.mkdir()
        assert tokenizer_ir.write_tokenizer_irs(src.tokenizer_files, src.chat_template, out) == list(IR_FILES)
    text = "Hello World, THIS is Phi"
    compiled = ov.Core().compile_model(str(out / C.TOKENIZER_XML), "CPU")
    got = np.asarray(compiled([text])["input_ids"])[0].tolist()
    assert got == Tokenizer.from_file(str(tj_path)).encode(text).ids


def test_unsupported_config_key_falls_back(tmp_path):
    checkpoint = factory.copy_checkpoint("phi4-mini", tmp_path / "ckpt")
    config_path = checkpoint / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["add_bos_token"] = True  # transformers rewrites the post-processor for this
    config_path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    with open_model(checkpoint) as src:
        with pytest.raises(Untranslatable, match="add_bos_token"):
            tokenizer_ir.native_models(src.tokenizer_files, src.chat_template)


def test_missing_tokenizer_json_is_a_checkpoint_error(tmp_path):
    from phi_quant.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        tokenizer_ir.write_tokenizer_irs({}, None, tmp_path)
