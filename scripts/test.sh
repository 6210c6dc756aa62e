#!/usr/bin/env bash
# Sets up the environment and runs every test: the Python suite (CUDA tests skip without a
# GPU) and the native C++ build of the same sources with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements-test.txt
source .venv/bin/activate
echo "[test] native build (CMake + libtorch) and ctest"
cmake -S . -B build-cmake -G Ninja \
  -DCMAKE_PREFIX_PATH="$(python -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
  -DPython3_EXECUTABLE="$(command -v python)" > build-cmake.log 2>&1 || { cat build-cmake.log; exit 1; }
cmake --build build-cmake -j"$(nproc)" >> build-cmake.log 2>&1 || { tail -50 build-cmake.log; exit 1; }
ctest --test-dir build-cmake --output-on-failure
echo "[test] python test suite"
python -m pytest -q "$@"
