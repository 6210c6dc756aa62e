#!/usr/bin/env bash
# One-shot GPU check for a lent machine (H200, 16 cores, torch + nvcc + CuPy, no network,
# nothing of ours installed).  Run from the repository root:
#
#     bash bench/device_check.sh            # logs go to $OUT if set, else a temporary folder
#
# Steps (each under its own timeout, all under one deadline of NTM_CHECK_BUDGET_S seconds,
# default 450, so the whole script ends well inside 8 minutes):
#   1. machine and tool versions
#   2. build the extension from source, in place, with CUDA (FORCE_CUDA=1, sm_90)
#   3. import check: build_info() and CUDA kernels registered for every op
#   4. python -m pytest -q -m cuda tests          (no -x: every failure is reported)
#   5. every bench/*_cuda.py script, run as `python bench/X_cuda.py` (a hook: drop in more);
#      the markdown table lines ("| ... |") each prints are collected
# A failing step is reported and the script goes on.  The summary table is printed LAST.
# Environment: PYTHON (default python, else python3), NTM_CHECK_BUDGET_S, NTM_SKIP_BUILD=1,
# MAX_JOBS (default 16), NTM_BENCH_ARGS (extra arguments for every bench script).
set -u
set -o pipefail

START=$(date +%s)
BUDGET=${NTM_CHECK_BUDGET_S:-450}
DEADLINE=$((START + BUDGET))
LOGDIR=${OUT:-}
if [ -z "$LOGDIR" ]; then LOGDIR=$(mktemp -d /tmp/ntm_device_check.XXXXXX); fi
mkdir -p "$LOGDIR"
PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1

declare -a SUMMARY=()
FAILED=0

now() { date +%s; }
remaining() { echo $((DEADLINE - $(now))); }

# step NAME CAP_SECONDS LOGFILE -- command...   (runs under min(CAP, time left) seconds)
step() {
  local name=$1 cap=$2 log=$3
  shift 4
  local left t0 rc status
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

# ----------------------------------------------------------------------------- 1. versions
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
for mod in ("cupy", "numpy", "pytest", "pytest_benchmark", "triton", "ninja", "pybind11"):
    try:
        m = importlib.import_module(mod)
        print(f"{mod} {getattr(m, '__version__', '?')}")
    except Exception as err:
        print(f"{mod}: not importable ({type(err).__name__})")
EOF
} 2>&1 | tee "$LOGDIR/versions.log"

# ----------------------------------------------------------------------------- 2. build
if [ "${NTM_SKIP_BUILD:-0}" = "1" ]; then
  SUMMARY+=("| build | skipped (NTM_SKIP_BUILD=1) | 0 | - |")
else
  if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
  step build 330 build.log -- env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 \
    MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py build_ext --inplace
  if [ $? -ne 0 ]; then
    echo "--- last lines of the build log:"
    grep -n -E "error|Error|FAILED" "$LOGDIR/build.log" | grep -v "Wunknown-pragmas" | head -30
    tail -25 "$LOGDIR/build.log"
  fi
  echo "build warnings other than torch's own '#pragma unroll' ones:"
  grep -i "warning" "$LOGDIR/build.log" | grep -v "Wunknown-pragmas" | sort | uniq -c | head -20
fi

# ----------------------------------------------------------------------------- 3. import check
step import 60 import.log -- "$PY" -c '
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
cat "$LOGDIR/import.log" 2>/dev/null

# ----------------------------------------------------------------------------- 4. tests
# NTM_CUDA_TESTS: the test paths to collect (default: all of tests/)
# shellcheck disable=SC2086
step "pytest -m cuda" 180 pytest_cuda.log -- "$PY" -m pytest -q -m cuda ${NTM_CUDA_TESTS:-tests} -rfE \
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
  # A fair share of the time left (at least 60 s, at most 200 s), so one slow script cannot
  # starve the ones after it; a cut-short script still leaves the rows it printed.
  share=$(( ($(remaining) - 10) / left_scripts ))
  [ "$share" -lt 60 ] && share=60
  [ "$share" -gt 200 ] && share=200
  left_scripts=$((left_scripts - 1))
  # shellcheck disable=SC2086
  step "$name" "$share" "$name.log" -- "$PY" "$script" ${NTM_BENCH_ARGS:-}
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
