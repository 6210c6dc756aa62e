#!/usr/bin/env bash
# One-shot GPU check for a lent machine (one call of at most 10 minutes; at most 8 files, 2
# folders deep, come back from $OUT).  Run from the repository root:
#
#     bash bench/device_check.sh                  # build, test, bench
#     NTM_SKIP_BUILD=1 bash bench/device_check.sh # rerun on a warm machine (already built)
#     NTM_DRY_RUN=1 bash bench/device_check.sh    # no GPU needed: check this script and show the plan
#
# Everything is written under a folder in /tmp; at the end only summary.md, pytest_cuda.xml
# and logs.tgz (every log, the benchmark tables and their pytest-benchmark JSON) are copied
# into $OUT.  The summary is printed last, with its FAILED lines at the very end.
#
# Steps, all under one deadline of NTM_CHECK_BUDGET_S seconds (default 540):
#   1. versions: machine, GPU, python (the first of python3/python that imports torch), nvcc
#   2. build in place with CUDA (sm_90); setup.py compiles the CPU instruction sets in parallel
#   3. torch.cuda.is_available() and the CUDA kernels registered: if not, stop at once
#   4. every CUDA test (-v, a per-test timeout), junit xml; all skipped counts as a failure
#   5. bench/bench_ops_cuda.py (the op table; L2 flushed between timed calls)
#   6. the rest while time is left: the other bench/*_cuda.py scripts, the CPU op tests under
#      the AVX-512 kernels when the CPU has them, an FSDP smoke on NCCL
# Environment: NTM_CHECK_BUDGET_S, NTM_SKIP_BUILD=1, NTM_DRY_RUN=1, MAX_JOBS (default 16),
# NTM_TEST_TIMEOUT_S (per CUDA test, default 120), PYTHON (tried before python3 and python).
set -u
set -o pipefail

START=$(date +%s)
BUDGET=${NTM_CHECK_BUDGET_S:-540}
DEADLINE=$((START + BUDGET))
DRY=${NTM_DRY_RUN:-0}
TEST_TIMEOUT=${NTM_TEST_TIMEOUT_S:-120}
WORK=$(mktemp -d /tmp/ntm_device_check.XXXXXX)
LOGS="$WORK/logs"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
CUDA_TESTS="tests/test_cuda_ops.py tests/test_cuda_launch.py tests/test_cuda_train_smoke.py
  tests/test_interop.py tests/nn/test_nn_reversible.py tests/models/test_ntm_step_groups.py
  tests/data/test_batches.py"
# Arguments that make every bench/*_cuda.py script a seconds-long CPU smoke in the dry run.
BENCH_SMOKE_ARGS="--device cpu --rows 8 --rounds 1 --inner 1 --depths 2 --no-compile"

declare -a SUMMARY=()
declare -a FAILED_LINES=()
OPTIONAL=0  # 1 for the steps after the op benchmark: out of time there is not a failure

now() { date +%s; }
remaining() { echo $((DEADLINE - $(now))); }
note_failure() { FAILED_LINES+=("FAILED $1"); }

PY=""
for candidate in ${PYTHON:-} python3 python; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" 2>/dev/null; then
    PY=$candidate
    break
  fi
done

# step NAME CAP_SECONDS LOG -- command...   (runs under min(CAP, time left) seconds)
step() {
  local name=$1 cap=$2 log=$3
  shift 4
  local left t0 rc status
  if [ "$DRY" = "1" ]; then
    echo "  plan: $name (<= ${cap}s, logs/$log): $(echo "$*" | tr '\n' ' ' | tr -s ' ' | cut -c1-600)"
    return 0
  fi
  left=$(remaining)
  if [ "$left" -lt 15 ]; then
    SUMMARY+=("| $name | SKIPPED (out of time) | 0 | - |")
    [ "$OPTIONAL" = "1" ] || note_failure "$name: skipped, out of time"
    return 99
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "=== $name (timeout ${cap}s) ==="
  t0=$(now)
  timeout -k 10 "$cap" "$@" >"$LOGS/$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then status=ok
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT after ${cap}s"
  else status="FAIL (rc $rc)"; fi
  [ $rc -ne 0 ] && note_failure "$name: $status (logs/$log)"
  SUMMARY+=("| $name | $status | $(( $(now) - t0 )) | logs/$log |")
  echo "--- $name: $status ($(( $(now) - t0 )) s)"
  return $rc
}

# summary.md, pytest_cuda.xml and logs.tgz into $1 (at most 3 files, no folders).
deliver() {
  local dest=$1
  mkdir -p "$dest"
  cp "$WORK/summary.md" "$dest/"
  [ -f "$WORK/pytest_cuda.xml" ] && cp "$WORK/pytest_cuda.xml" "$dest/"
  tar -czf "$dest/logs.tgz" -C "$WORK" logs
}

write_summary() {
  {
    echo "# device check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    head -8 "$LOGS/versions.log" 2>/dev/null | sed 's/^/    /'
    echo
    echo "total: $(( $(now) - START )) s of a ${BUDGET} s budget; work folder $WORK"
    echo "tests: $(grep -E "^=+ .*(passed|failed|error|skipped|no tests ran)" \
      "$LOGS/pytest_cuda.log" 2>/dev/null | tail -1)"
    echo
    echo "| step | status | seconds | log |"
    echo "|---|---|---|---|"
    for line in "${SUMMARY[@]}"; do echo "$line"; done
    echo
    for table in "$LOGS"/*_cuda.md; do
      [ -f "$table" ] || continue
      echo "## $(basename "$table" .md)"
      cat "$table"
      echo
    done
    grep -E "^(FAILED|ERROR) " "$LOGS/pytest_cuda.log" 2>/dev/null
    for line in "${FAILED_LINES[@]}"; do echo "$line"; done
    if [ ${#FAILED_LINES[@]} -eq 0 ]; then echo "device_check: ALL STEPS OK"
    else echo "device_check: NOT OK (${#FAILED_LINES[@]} FAILED lines above)"; fi
  } >"$WORK/summary.md"
}

finish() {
  write_summary
  [ -n "${OUT:-}" ] && deliver "$OUT"
  echo
  cat "$WORK/summary.md"
  exit "${#FAILED_LINES[@]}"
}
trap 'note_failure "interrupted"; finish' TERM INT

timeout_args() {
  echo "-o faulthandler_timeout=$TEST_TIMEOUT"
  "$PY" -c "import pytest_timeout" 2>/dev/null && echo "--timeout=$TEST_TIMEOUT"
}

dry_run() {
  local ok=0 script name n files depth fake
  echo "device_check dry run: python '$PY', work folder $WORK"
  bash -n "$0" && echo "bash -n: ok" || { echo "bash -n: FAILED"; ok=1; }
  [ -n "$PY" ] || { echo "no python that imports torch"; return 1; }
  echo "the single call, in order (each capped by the time left of ${BUDGET}s):"
  step build 240 build.log -- env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 \
    "$PY" setup.py build_ext --inplace
  step "cuda available" 60 extension.log -- "$PY" bench/device_check_extension.py
  echo "  (stop here at once if no GPU)"
  # shellcheck disable=SC2046,SC2086
  step "cuda tests" 240 pytest_cuda.log -- "$PY" -m pytest -v -m cuda $CUDA_TESTS -rfE \
    $(timeout_args) --junitxml=pytest_cuda.xml
  step bench_ops_cuda 120 bench_ops_cuda.log -- "$PY" bench/bench_ops_cuda.py --no-compile \
    --out logs/bench_ops_cuda.md
  echo "  then, while time is left: the other bench/*_cuda.py, AVX-512 CPU tests, FSDP smoke"
  for script in bench/*_cuda.py; do
    name=$(basename "$script" .py)
    # shellcheck disable=SC2086
    if timeout 120 "$PY" "$script" $BENCH_SMOKE_ARGS --out "$LOGS/$name.md" >"$LOGS/$name.log" 2>&1; then
      echo "$script --device cpu: ok"
    else
      echo "$script --device cpu: FAILED"; tail -5 "$LOGS/$name.log"; ok=1
    fi
  done
  # the real run's pytest arguments, so that a bad one fails here
  # shellcheck disable=SC2046,SC2086
  n=$("$PY" -m pytest --collect-only -q -m cuda $CUDA_TESTS -rfE $(timeout_args) \
      --junitxml="$WORK/collect.xml" 2>&1 | tail -1 |
      grep -oE "^[0-9]+(/[0-9]+)? tests? collected" | grep -oE "^[0-9]+")
  echo "collect-only of the CUDA tests: ${n:-0} tests in $(echo $CUDA_TESTS | wc -w) files"
  [ "${n:-0}" -gt 0 ] || ok=1
  echo '<testsuites/>' >"$WORK/pytest_cuda.xml"
  write_summary
  fake=$(mktemp -d /tmp/ntm_device_check_out.XXXXXX)
  deliver "$fake"
  files=$(find "$fake" -type f | wc -l)
  depth=$(find "$fake" -mindepth 1 -type d | awk -F/ '{print NF}' | sort -n | tail -1)
  depth=$(( ${depth:-0} > 0 ? depth - $(echo "$fake" | awk -F/ '{print NF}') : 0 ))
  echo "fake \$OUT: $files files ($(cd "$fake" && ls | tr '\n' ' ')), $depth folders deep"
  [ "$files" -le 8 ] && [ "$depth" -le 2 ] || ok=1
  rm -rf "$fake" "$WORK"
  [ $ok -eq 0 ] && echo "device_check dry run: OK" || echo "device_check dry run: FAILED"
  return $ok
}

if [ "$DRY" = "1" ]; then
  dry_run
  exit $?
fi

# ----------------------------------------------------------------------------- 1. versions
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)   host: $(hostname)   cores: $(nproc)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
    --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
  echo "python: ${PY:-none imports torch} $("${PY:-false}" --version 2>&1)"
  (command -v nvcc >/dev/null && nvcc --version | tail -1) || \
    (test -x /usr/local/cuda/bin/nvcc && /usr/local/cuda/bin/nvcc --version | tail -1) || \
    echo "nvcc: not found"
  [ -n "$PY" ] && "$PY" -c "import torch, importlib
print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), GPUs: {torch.cuda.device_count()}')
for m in ('pytest', 'pytest_timeout', 'pytest_benchmark', 'hypothesis', 'cupy', 'ninja'):
    try: print(m, getattr(importlib.import_module(m), '__version__', '?'))
    except Exception as e: print(m, 'not importable', type(e).__name__)" 2>&1
} >"$LOGS/versions.log" 2>&1
cat "$LOGS/versions.log"
if [ -z "$PY" ]; then note_failure "no python3/python that imports torch"; finish; fi

# ----------------------------------------------------------------------------- 2. build
if [ "${NTM_SKIP_BUILD:-0}" = "1" ]; then
  SUMMARY+=("| build | skipped (NTM_SKIP_BUILD=1) | 0 | - |")
else
  if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
  if ! step build 240 build.log -- env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 \
      MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py build_ext --inplace; then
    grep -n -E "error|FAILED" "$LOGS/build.log" | head -20
    finish
  fi
fi

# ----------------------------------------------------------------------------- 3. GPU present
if ! step "cuda available" 60 extension.log -- "$PY" bench/device_check_extension.py; then
  note_failure "cuda available: $(tail -1 "$LOGS/extension.log")"
  finish
fi
cat "$LOGS/extension.log"

# ----------------------------------------------------------------------------- 4. CUDA tests
# shellcheck disable=SC2046,SC2086
step "cuda tests" 240 pytest_cuda.log -- "$PY" -m pytest -v -m cuda $CUDA_TESTS -rfE \
  $(timeout_args) --junitxml="$WORK/pytest_cuda.xml"
if ! grep -qE "[0-9]+ passed" "$LOGS/pytest_cuda.log"; then
  note_failure "cuda tests: none passed (all skipped?)"
fi

# ----------------------------------------------------------------------------- 5. op benchmark
step bench_ops_cuda 120 bench_ops_cuda.log -- "$PY" bench/bench_ops_cuda.py --no-compile \
  --out "$LOGS/bench_ops_cuda.md"

# ----------------------------------------------------------------------------- 6. the rest
OPTIONAL=1
for script in bench/*_cuda.py; do
  name=$(basename "$script" .py)
  [ "$name" = bench_ops_cuda ] && continue
  step "$name" 90 "$name.log" -- "$PY" "$script" --out "$LOGS/$name.md"
done
step "training step profile (cuda)" 60 profile_step.log -- "$PY" bench/profile_step.py \
  --device cuda --out "$LOGS/profile_step_cuda.md"
step "transporter step (cuda)" 60 transporter_step.log -- "$PY" bench/bench_transporter_step.py \
  --device cuda --rounds 3 --out "$LOGS/transporter_step_cuda.md"
if "$PY" -c 'import sys, ntm_engine; sys.exit("avx512" not in ntm_engine.build_info()["cpu_capabilities_supported"])' 2>/dev/null; then
  step "cpu tests (avx512 kernels)" 60 pytest_cpu_avx512.log -- env NTM_CPU_CAPABILITY=avx512 \
    "$PY" -m pytest -q tests/test_ops_accuracy.py tests/test_ops_dispatch.py -rfE
fi
NPROC=$("$PY" -c 'import torch; print(2 if torch.cuda.device_count() >= 2 else 1)')
step "fsdp smoke (nccl, $NPROC process)" 90 fsdp_smoke.log -- bash -c "
  \"\$0\" -m torch.distributed.run --standalone --nproc_per_node=$NPROC -m ntm_engine train \
    --parallel fsdp --dataset digits --iters 6 --batch-size 32 --width 64 --depth 2 \
    --heads 2 --transporter-layers 2 --transporter-hidden 32 --ckpt-every 3 --eval-every 6 \
    --eval-samples 20 --log-every 2 --no-progress --out '$WORK/fsdp_run' &&
  \"\$0\" -m ntm_engine sample '$WORK/fsdp_run' -n 8 --device cuda --out '$LOGS/fsdp_sample.png'
" "$PY"

finish
