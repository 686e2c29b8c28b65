#!/usr/bin/env bash
# Quick start: install phi-quant and one backend into .venv, convert the built-in tiny Phi-4-mini
# checkpoint (no download) to int4 with that backend, and generate text with the result.
set -euo pipefail
cd "$(dirname "$0")/.."

BACKEND="${PHI_QUANT_DEMO_BACKEND:-onnx}"
PY="${PYTHON:-python3.11}"
VENV="${PHI_QUANT_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q -e . -e "plugins/$BACKEND"

OUT="build/demo/tiny-phi4-mini-$BACKEND-int4"
echo "# The tiny model has random weights: its text is gibberish. eval shows how far the int4 export"
echo "# is from the fp32 oracle on the same prompts, and how fast it runs here."
set -x
phi-quant quantize tiny:phi4-mini --backend "$BACKEND" --precision int4 -o "$OUT" --force
phi-quant run "$OUT" --prompt "The capital of France is" --max-tokens 16
phi-quant eval "$OUT" --reference tiny:phi4-mini
