#!/usr/bin/env bash
# One-shot GPU check for a lent machine (H200, 16 cores, torch + nvcc + CuPy, no network,
# nothing of ours installed).  Run from the repository root:
#
#     bash bench/device_check.sh                  # build, test, bench; logs under $OUT
#     NTM_SKIP_BUILD=1 bash bench/device_check.sh # rerun on a warm machine (already built)
#     NTM_DRY_RUN=1 bash bench/device_check.sh    # no GPU needed: print the plan, collect tests
#
# Steps (each under its own timeout, all under one deadline of NTM_CHECK_BUDGET_S seconds,
# default 330, which leaves room for a rerun in a 15-minute GPU allowance):
#   1. import check: versions of the machine, torch, CUDA, CuPy (before anything is built)
#   2. build the extension from source, in place, with CUDA (FORCE_CUDA=1, sm_90);
#      skipped with NTM_SKIP_BUILD=1
#   3. extension check: build_info(), CUDA kernels registered for every op, a smoke call
#   4. pytest on the CUDA test files only (NTM_CUDA_TESTS), so that a missing optional test
#      dependency elsewhere cannot stop collection; no -x: every failure is reported
#   5. every bench/*_cuda.py script (a hook: drop in more), without torch.compile unless
#      NTM_BENCH_COMPILE=1; the markdown table lines ("| ... |") each prints are collected
#   6. the CPU op tests under the AVX-512 kernels when this CPU has them (this project's dev
#      machines do not, so the lent machine is where that variant runs)
#   7. FSDP smoke on NCCL: `torchrun ... train --parallel fsdp` (2 processes with 2 GPUs, else
#      1: FSDP2 still shards, gathers and checkpoints through NCCL) for a few digits steps with
#      an evaluation and a sample grid, then `ntm sample` of its checkpoint in one process
# A failing step is reported and the script goes on.  Everything is written under $OUT (else
# a temporary folder); a short table of the steps is printed LAST.
# Environment: PYTHON (default python, else python3), NTM_CHECK_BUDGET_S, NTM_SKIP_BUILD=1,
# NTM_DRY_RUN=1, NTM_BENCH_COMPILE=1, MAX_JOBS (default 16), NTM_BENCH_ARGS (extra arguments
# for every bench script), NTM_CUDA_TESTS (test paths).
set -u
set -o pipefail

START=$(date +%s)
BUDGET=${NTM_CHECK_BUDGET_S:-330}
DEADLINE=$((START + BUDGET))
LOGDIR=${OUT:-}
if [ -z "$LOGDIR" ]; then LOGDIR=$(mktemp -d /tmp/ntm_device_check.XXXXXX); fi
mkdir -p "$LOGDIR"
PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
DRY=${NTM_DRY_RUN:-0}
CUDA_TESTS=${NTM_CUDA_TESTS:-tests/test_cuda_ops.py tests/test_cuda_launch.py tests/test_interop.py tests/nn/test_nn_reversible.py}
BENCH_ARGS=${NTM_BENCH_ARGS:-}
[ "${NTM_BENCH_COMPILE:-0}" = "1" ] || BENCH_ARGS="--no-compile $BENCH_ARGS"

declare -a SUMMARY=()
FAILED=0

now() { date +%s; }
remaining() { echo $((DEADLINE - $(now))); }

# step NAME CAP_SECONDS LOGFILE -- command...   (runs under min(CAP, time left) seconds)
step() {
  local name=$1 cap=$2 log=$3
  shift 4
  local left t0 rc status
  if [ "$DRY" = "1" ]; then
    echo "would run: [$name, <= ${cap}s, log $log] $(echo "$*" | tr '\n' ' ' | cut -c1-240)"
    SUMMARY+=("| $name | dry run | 0 | - |")
    return 0
  fi
  left=$(remaining)
  if [ "$left" -lt 15 ]; then
    SUMMARY+=("| $name | SKIPPED (out of time) | 0 | - |")
    FAILED=$((FAILED + 1))
    return 99
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "=== $name (timeout ${cap}s) ==="
  t0=$(now)
  timeout -k 10 "$cap" "$@" >"$LOGDIR/$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then status=ok
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT after ${cap}s"
  else status="FAIL (rc $rc)"; fi
  [ $rc -ne 0 ] && FAILED=$((FAILED + 1))
  SUMMARY+=("| $name | $status | $(( $(now) - t0 )) | $log |")
  echo "--- $name: $status ($(( $(now) - t0 )) s, log $LOGDIR/$log)"
  return $rc
}

# ----------------------------------------------------------------------------- 1. import check
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)   host: $(hostname)   cores: $(nproc)"
  nvidia-smi -L 2>&1 || echo "nvidia-smi failed"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
    --format=csv 2>&1 || true
  echo "python: $("$PY" --version 2>&1)   ($PY)"
  (command -v nvcc >/dev/null && nvcc --version | tail -2) || \
    (test -x /usr/local/cuda/bin/nvcc && /usr/local/cuda/bin/nvcc --version | tail -2) || \
    echo "nvcc: not found"
  echo "gcc: $(gcc --version 2>&1 | head -1)"
  "$PY" - <<'EOF' 2>&1
import importlib, torch
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: "
      f"{torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
          f"{p.multi_processor_count} SMs")
for mod in ("cupy", "numpy", "pytest", "pytest_benchmark", "hypothesis", "safetensors",
            "triton", "ninja", "pybind11"):
    try:
        m = importlib.import_module(mod)
        print(f"{mod} {getattr(m, '__version__', '?')}")
    except Exception as err:
        print(f"{mod}: not importable ({type(err).__name__})")
EOF
} 2>&1 | tee "$LOGDIR/versions.log"

# ----------------------------------------------------------------------------- 2. build
if [ "${NTM_SKIP_BUILD:-0}" = "1" ] && [ "$DRY" != "1" ]; then
  SUMMARY+=("| build | skipped (NTM_SKIP_BUILD=1) | 0 | - |")
else
  if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
  step build 240 build.log -- env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 \
    MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py build_ext --inplace
  if [ $? -ne 0 ] && [ "$DRY" != "1" ]; then
    echo "--- last lines of the build log:"
    grep -n -E "error|Error|FAILED" "$LOGDIR/build.log" | grep -v "Wunknown-pragmas" | head -30
    tail -25 "$LOGDIR/build.log"
  fi
  if [ -f "$LOGDIR/build.log" ]; then
    echo "build warnings other than torch's own '#pragma unroll' ones:"
    grep -i "warning" "$LOGDIR/build.log" | grep -v "Wunknown-pragmas" | sort | uniq -c | head -20
  fi
fi

# ----------------------------------------------------------------------------- 3. extension check
step extension 60 extension.log -- "$PY" -c '
import torch, ntm_engine
info = ntm_engine.build_info()
print("build_info:", info)
ops = ["affine_coupling", "affine_coupling_inverse", "affine_coupling_backward",
       "gaussian_nll", "gaussian_nll_backward"]
missing = [op for op in ops
           if not torch._C._dispatch_has_kernel_for_dispatch_key("ntm::" + op, "CUDA")]
print("CUDA kernels missing:", missing or "none")
assert info["cuda"] and not missing
x = torch.randn(4, 1000, device="cuda")
y, ld = ntm_engine.ops.affine_coupling(x, x, x, 2.0)
torch.cuda.synchronize()
print("smoke:", y.shape, ld.shape, bool(torch.isfinite(y).all()))
'
cat "$LOGDIR/extension.log" 2>/dev/null

# ----------------------------------------------------------------------------- 4. tests
if [ "$DRY" = "1" ]; then
  # shellcheck disable=SC2086
  COLLECTED=$("$PY" -m pytest --collect-only -q -m cuda $CUDA_TESTS 2>&1 | tail -3)
  echo "collect-only of the CUDA test files: $COLLECTED"
  # "N/M tests collected (K deselected)" or "M tests collected"
  N_CUDA=$(echo "$COLLECTED" | grep -oE "[0-9]+(/[0-9]+)? tests? collected" | head -1 | grep -oE "^[0-9]+")
  echo "CUDA tests that would run: ${N_CUDA:-0}"
  [ "${N_CUDA:-0}" -gt 0 ] || FAILED=$((FAILED + 1))
fi
# shellcheck disable=SC2086
step "pytest -m cuda" 150 pytest_cuda.log -- "$PY" -m pytest -q -m cuda $CUDA_TESTS -rfE \
  --durations=8 --junitxml="$LOGDIR/pytest_cuda.xml"
PYTEST_LINE=$(grep -E "(passed|failed|error|skipped|no tests ran)" "$LOGDIR/pytest_cuda.log" \
  2>/dev/null | tail -1)
grep -E "^(FAILED|ERROR) " "$LOGDIR/pytest_cuda.log" 2>/dev/null | head -40

# ----------------------------------------------------------------------------- 5. benchmarks
TABLES="$LOGDIR/bench_tables.md"
: >"$TABLES"
SCRIPTS=()
for script in bench/*_cuda.py; do [ -e "$script" ] && SCRIPTS+=("$script"); done
left_scripts=${#SCRIPTS[@]}
for script in "${SCRIPTS[@]}"; do
  name=$(basename "$script" .py)
  # A fair share of the time left (at least 30 s, at most 90 s), so one slow script cannot
  # starve the ones after it; a cut-short script still leaves the rows it printed.
  share=$(( ($(remaining) - 10) / left_scripts ))
  [ "$share" -lt 30 ] && share=30
  [ "$share" -gt 90 ] && share=90
  left_scripts=$((left_scripts - 1))
  # shellcheck disable=SC2086
  step "$name" "$share" "$name.log" -- "$PY" "$script" $BENCH_ARGS
  [ -f "$LOGDIR/$name.log" ] || { echo "### $name: not run" >>"$TABLES"; continue; }
  {
    echo "### $name"
    grep -E "^(GPU|CPU) " "$LOGDIR/$name.log" | head -3
    if ! grep -E "^\|" "$LOGDIR/$name.log"; then
      echo "(no table; the log's last lines follow, see $name.log)"
      tail -12 "$LOGDIR/$name.log"
    fi
    echo
  } >>"$TABLES"
done

# ----------------------------------------------------------------------------- 6. AVX-512 CPU
if "$PY" -c 'import sys, ntm_engine; sys.exit("avx512" not in ntm_engine.build_info()["cpu_capabilities_supported"])' 2>/dev/null || [ "$DRY" = "1" ]; then
  step "cpu tests (avx512 kernels)" 60 pytest_cpu_avx512.log -- env NTM_CPU_CAPABILITY=avx512 \
    "$PY" -m pytest -q tests/test_ops_accuracy.py tests/test_ops_dispatch.py -rfE
else
  SUMMARY+=("| cpu tests (avx512 kernels) | skipped (no AVX-512 here) | 0 | - |")
fi

# ----------------------------------------------------------------------------- 7. FSDP on NCCL
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
NPROC=1
[ "${NGPU:-0}" -ge 2 ] && NPROC=2
FSDP_RUN="$LOGDIR/fsdp_run"
step "fsdp smoke (nccl, $NPROC process)" 90 fsdp_smoke.log -- bash -c "
  \"\$0\" -m torch.distributed.run --standalone --nproc_per_node=$NPROC -m ntm_engine train \
    --parallel fsdp --dataset digits --iters 6 --batch-size 32 --width 64 --depth 2 \
    --heads 2 --transporter-layers 2 --transporter-hidden 32 --ckpt-every 3 --eval-every 6 \
    --eval-samples 20 --log-every 2 --no-progress --out '$FSDP_RUN' &&
  \"\$0\" -m ntm_engine sample '$FSDP_RUN' -n 8 --device cuda --out '$FSDP_RUN/one_process.png'
" "$PY"
grep -E "^ntm train|^step|\"event\": \"end\"|error|Error" "$LOGDIR/fsdp_smoke.log" 2>/dev/null | head -12

# ----------------------------------------------------------------------------- summary (last)
echo
echo "================================ benchmark tables ================================"
cat "$TABLES"
echo "==================================== summary ====================================="
echo "logs: $LOGDIR    total: $(( $(now) - START )) s of a ${BUDGET} s budget"
echo "tests: ${PYTEST_LINE:-no pytest summary line}"
echo
echo "| step | status | seconds | log |"
echo "|---|---|---|---|"
for line in "${SUMMARY[@]}"; do echo "$line"; done
echo
if [ "$FAILED" -eq 0 ]; then echo "device_check: ALL STEPS OK"
else echo "device_check: $FAILED STEP(S) NOT OK"; fi
exit "$FAILED"
