#!/usr/bin/env bash
# Creates .venv (if absent), installs the pinned dependencies and builds ntm_engine in place.
# Usage: scripts/setup.sh [requirements-file]     (default: requirements.txt)
# Env: FORCE_CUDA=0|1 (default: CUDA kernels are built when torch is a CUDA build and nvcc
# exists), TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default: number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."
REQ="${1:-requirements.txt}"
PY="${PYTHON:-python3}"
NEED_GB=7   # torch 2.14.1 is a CUDA build: about 6 GB in .venv
if [ ! -x .venv/bin/python ] && [ -z "${NTM_SKIP_DISK_CHECK:-}" ]; then
  free_gb=$(( $(df -Pk . | awk 'NR == 2 {print $4}') / 1048576 ))
  if [ "$free_gb" -lt "$NEED_GB" ]; then
    echo "[setup] error: .venv needs about $NEED_GB GB of free disk here (torch's CUDA build)," \
         "$free_gb GB free in $(pwd); free some space (NTM_SKIP_DISK_CHECK=1 tries anyway)" >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
echo "[setup] installing $REQ"
python -m pip install -q -r "$REQ"
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
echo "[setup] building ntm_engine (FORCE_CUDA=${FORCE_CUDA:-auto}); the first build takes a few minutes"
python -m pip install -q --no-build-isolation --no-deps -e .
python -c "import ntm_engine; print('[setup] ntm_engine', ntm_engine.__version__, ntm_engine.build_info())"
