#!/usr/bin/env bash
# llama.cpp interop: installs the `interop` extra (llama-cpp-python, which builds llama.cpp
# from source: 41 minutes measured on 2 busy shared CPU cores) when it is missing, then
# runs the llama.cpp tests (`pytest -m interop tests/test_gguf_interop.py`) and prints the
# agreement table (scripts/bench_gguf.py).
#
#   scripts/check_interop.sh            # with .venv/bin/python
#   PYTHON=path/to/python scripts/check_interop.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if ! "$PY" -c "import llama_cpp" 2>/dev/null; then
  echo "Building llama-cpp-python (llama.cpp from source; this takes a while) ..."
  start=$(date +%s)
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF}" \
    "$PY" -m pip install --quiet -e '.[interop]'
  echo "llama-cpp-python built and installed in $(( $(date +%s) - start )) s"
fi

"$PY" -m pytest -q -m interop tests/test_gguf_interop.py
"$PY" scripts/bench_gguf.py
