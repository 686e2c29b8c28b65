"""Vendor recipe: onnxruntime's own INT4 weight quantizers (``MatMulNBitsQuantizer``) on phi-quant's fp32 ONNX.

Not a test. It exports the model at fp32 with phi-quant's onnx backend (the graph onnxruntime-genai's
builder writes), then runs onnxruntime's ``matmul_nbits_quantizer`` with each algorithm asked for,
at phi-quant's default onnx int4 settings (4 bits, block 32, symmetric where the algorithm has the
choice), and writes one directory per algorithm with the genai config and tokenizer copied, so
``bench/calibration_fidelity.py "vendor|DIR|onnx"`` runs it in onnxruntime-genai as our own outputs:

- ``default`` — round to nearest (the builder's int4);
- ``k_quant`` — onnxruntime's k-quant search (data-free);
- ``hqq`` — half-quadratic quantization (asymmetric by construction; needs torch, the test venv has it);
- ``gptq`` — onnxruntime's GPTQ on the same calibration tokens phi-quant calibrates on (windows of 512).

    python bench/vendor_onnx.py --work /tmp/bench default k_quant hqq gptq
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _calibration_feeds(model: str, tokens: int, onnx_path: Path) -> list[dict]:
    """Whole-model inputs for the calibration windows: empty past key/values, positions from 0."""
    import onnx

    from phi_quant.convert import open_source
    from phi_quant.texts import calibration_text

    with open_source(model) as src:
        ids = src.hf_tokenizer().encode(calibration_text().text, add_special_tokens=False).ids[:tokens]
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    feeds = []
    for i in range(0, len(ids), 512):
        w = np.asarray(ids[i : i + 512], np.int64)[None, :]
        feed: dict = {}
        for inp in graph.input:
            name = inp.name
            if name == "input_ids":
                feed[name] = w
            elif name == "attention_mask":
                feed[name] = np.ones_like(w)
            elif name == "position_ids":
                feed[name] = np.arange(w.shape[1], dtype=np.int64)[None, :]
            elif name.startswith("past_key_values"):
                dims = [d.dim_value if d.dim_value else 0 for d in inp.type.tensor_type.shape.dim]
                dims[0] = 1
                feed[name] = np.zeros(dims, np.float32)
        feeds.append(feed)
    return feeds


class _Reader:
    def __init__(self, feeds: list[dict]):
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0


def _config(name: str, feeds):
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    both = ("MatMul", "Gather")  # the embedding table too, as the builder's int4 does
    if name == "default":
        return mnq.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, op_types_to_quantize=both,
                                                quant_axes=(("MatMul", 0), ("Gather", 1)))
    if name == "k_quant":
        return mnq.KQuantWeightOnlyQuantConfig()
    if name == "hqq":
        return mnq.HQQWeightOnlyQuantConfig(block_size=32, bits=4, op_types_to_quantize=both,
                                            quant_axes=(("MatMul", 0), ("Gather", 1)))
    if name == "gptq":
        return mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader(feeds()), block_size=32)
    raise SystemExit(f"unknown algorithm {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("algorithms", nargs="+", choices=("default", "k_quant", "hqq", "gptq"))
    ap.add_argument("--model", default="real:smollm2")
    ap.add_argument("--work", type=Path, default=Path("/tmp/phi-quant-calibration-bench"))
    ap.add_argument("--tokens", type=int, default=2048)
    args = ap.parse_args()
    import onnxruntime
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    base = args.work / "onnx-fp32"
    if not (base / "model.onnx").exists():
        subprocess.run([sys.executable, "-m", "phi_quant.cli", "quantize", args.model, "-b", "onnx", "-p", "fp32",
                        "-o", str(base), "--force", "-q"], check=True)
    for name in args.algorithms:
        out = args.work / f"ort-{name}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(base, out, ignore=shutil.ignore_patterns("model.onnx", "model.onnx.data"))
        t0 = time.perf_counter()
        quant = mnq.MatMulNBitsQuantizer(str(base / "model.onnx"), bits=4, block_size=32, is_symmetric=True,
                                         algo_config=_config(name, lambda: _calibration_feeds(args.model, args.tokens,
                                                                                              base / "model.onnx")))
        quant.process()
        model = quant.model.model
        if name in ("k_quant", "gptq"):  # these quantize MatMuls only: the table gets the builder's int4 after
            import onnx.external_data_helper as ext

            # The in-memory model's external tensors name "model.onnx.data" relative to base; the
            # second pass has no base directory and would look for it in the working directory.
            ext.load_external_data_for_model(model, str(base))
            table = mnq.MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=True, algo_config=(
                mnq.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, op_types_to_quantize=("Gather",),
                                                 quant_axes=(("Gather", 1),))))
            table.process()
            quant = table
        seconds = time.perf_counter() - t0
        quant.model.save_model_to_file(str(out / "model.onnx"), use_external_data_format=True)
        record = {"tool": f"onnxruntime {onnxruntime.__version__} MatMulNBitsQuantizer", "algorithm": name,
                  "block_size": 32, "tokens": args.tokens if name == "gptq" else None, "seconds": round(seconds, 1),
                  "dir": str(out)}
        (out / "vendor.json").write_text(json.dumps(record, indent=1))
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
