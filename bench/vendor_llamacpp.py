"""Vendor recipe: llama.cpp's own importance matrix (``llama-imatrix``) and ``llama-quantize --imatrix``.

Not a test, and not part of phi-quant: it needs the two llama.cpp tools built from the llama.cpp
that llama-cpp-python vendors (the same version as the runtime the llamacpp backend runs), e.g.

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/x && tar xzf ...
    cmake -S .../vendor/llama.cpp -B /tmp/llama-build -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF
    cmake --build /tmp/llama-build --target llama-imatrix llama-quantize -j2

It exports the model at fp32 with phi-quant's llamacpp backend (the GGUF llama.cpp's converter would
write: same tensors, same metadata), writes the first ``--tokens`` tokens of phi-quant's calibration
text (``phi_quant.texts.calibration_text()``, decoded back to text so llama.cpp tokenizes the same
ids) to a file, runs ``llama-imatrix -c 512 --chunks N`` on it, and quantizes with
``llama-quantize --imatrix`` into one directory per type (``vendor-imatrix-Q4_K_M`` ...). With
``--ours DIR`` (a phi-quant calibrated llamacpp export) it also quantizes with phi-quant's own
``imatrix.gguf``, which shows llama.cpp's loader accepts that file.

    python bench/vendor_llamacpp.py --bin /tmp/llama-build/bin --work /tmp/bench Q4_K_M Q4_0
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _text_file(model: str, tokens: int, path: Path) -> int:
    from phi_quant.convert import open_source
    from phi_quant.texts import calibration_text

    with open_source(model) as src:
        tok = src.hf_tokenizer()
        ids = tok.encode(calibration_text().text, add_special_tokens=False).ids[:tokens]
        path.write_text(tok.decode(ids, skip_special_tokens=False), encoding="utf-8")
    return len(ids)


def _run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("types", nargs="+", help="llama-quantize types, e.g. Q4_K_M Q4_0")
    ap.add_argument("--bin", type=Path, required=True, help="directory with llama-imatrix and llama-quantize")
    ap.add_argument("--model", default="real:smollm2")
    ap.add_argument("--work", type=Path, default=Path("/tmp/phi-quant-calibration-bench"))
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--ours", type=Path, help="a phi-quant calibrated llamacpp export: also quantize with its imatrix.gguf")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = args.work / "llamacpp-fp32"
    if not base.exists():
        subprocess.run([sys.executable, "-m", "phi_quant.cli", "quantize", args.model, "-b", "llamacpp", "-p", "fp32",
                        "-o", str(base), "--force", "-q"], check=True)
    gguf = next(p for p in base.glob("*.gguf"))
    text = args.work / "calibration.txt"
    n = _text_file(args.model, args.tokens, text)
    imatrix = args.work / "llama-imatrix.gguf"
    chunks = max(1, n // 512)
    seconds = _run([str(args.bin / "llama-imatrix"), "-m", str(gguf), "-f", str(text), "-o", str(imatrix), "-c", "512",
                    "--chunks", str(chunks), "-t", str(args.threads), "--no-ppl"], args.work / "llama-imatrix.log")
    print(json.dumps({"imatrix": str(imatrix), "tokens": n, "chunks": chunks, "seconds": round(seconds, 1)}), flush=True)
    matrices = {"imatrix": imatrix}
    if args.ours:
        matrices["ours"] = args.ours / "imatrix.gguf"
    for label, matrix in matrices.items():
        for qtype in args.types:
            out = args.work / f"vendor-{label}-{qtype}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            s = _run([str(args.bin / "llama-quantize"), "--imatrix", str(matrix), str(gguf), str(out / f"model-{qtype}.gguf"),
                      qtype, str(args.threads)], out / "llama-quantize.log")
            record = {"tool": "llama.cpp llama-quantize --imatrix", "imatrix": f"{label} ({matrix.name})", "type": qtype,
                      "imatrix_tokens": n, "seconds": round(s, 1), "dir": str(out)}
            (out / "vendor.json").write_text(json.dumps(record, indent=1))
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
