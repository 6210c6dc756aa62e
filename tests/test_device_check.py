"""bench/device_check.sh gets one chance on a lent GPU machine: its dry run (no GPU needed) must
pass here -- the script parses, every bench/*_cuda.py runs as a CPU smoke, the CUDA tests
collect, and what would come back from $OUT fits the machine's limits (<= 8 files, <= 2
folders deep)."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_device_check_dry_run_passes():
    env = dict(os.environ, NTM_DRY_RUN="1")
    env.pop("OUT", None)
    proc = subprocess.run(["bash", "bench/device_check.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for expected in ("bash -n: ok", "plan: build", "plan: cuda available", "plan: cuda tests",
                     "plan: bench_ops_cuda", "bench/bench_ops_cuda.py --device cpu: ok",
                     "fake $OUT: 3 files", "device_check dry run: OK"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
