"""Processes that fail together (issue 24, item 4), 2 CPU processes under torchrun and gloo:
when one rank dies (SIGKILL, or an exception) the other exits within a bounded time and the
output names the failed rank; a 2-process bf16 run killed and resumed ends with the weights of
an uninterrupted one, bit for bit."""
import os
import signal
import time
from pathlib import Path

import pytest

from ntm_engine.training import read_metrics
from tests.run_testutils import assert_same_weights
from tests.test_scale_distributed import _torchrun, run_killed_and_resumed

# how long the surviving rank may take to go once its peer died (gloo sees the closed socket
# at its next collective, within one iteration; torchrun then ends the group)
BOUND_S = 60


def workers(agent_pid: int) -> dict:
    """``{rank: pid}`` of the worker processes torchrun ``agent_pid`` started."""
    out = {}
    for kid in Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split():
        try:
            env = Path(f"/proc/{kid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [e[5:] for e in env if e.startswith(b"RANK=")]
        if ranks:
            out[int(ranks[0])] = int(kid)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def ends_within(proc, seconds: float) -> str:
    """Wait for torchrun ``proc`` to end (at most ``seconds``); its output."""
    t0 = time.time()
    proc.wait(timeout=seconds)
    assert time.time() - t0 < seconds
    return proc.stdout.read().decode()


def trained_some(run: Path) -> bool:
    return any(r.get("type") == "train" for r in read_metrics(run))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_rank_takes_the_run_down_within_a_bound(tmp_path):
    run = tmp_path / "run"
    proc = _torchrun(run, throttle=0.3)
    try:
        deadline = time.time() + 120
        while not trained_some(run):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
            time.sleep(0.1)
        ranks = workers(proc.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGKILL)
        out = ends_within(proc, BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert not alive(ranks[0])
    assert "rank      : 1 (local_rank: 1)" in out and "Signal 9 (SIGKILL)" in out, out[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_an_exception_on_one_rank_ends_the_other_and_names_the_rank(tmp_path):
    proc = _torchrun(tmp_path / "run", "--fault-raise-at", "1,3")
    try:
        out = ends_within(proc, BOUND_S + 60)   # (start-up included)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "ntm train: rank 1 of 2 failed at step 2: RuntimeError: fault injected at step 3" \
        in out, out[-3000:]
    assert "rank      : 1 (local_rank: 1)" in out, out[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_two_process_bf16_run_resumes_to_the_same_weights(tmp_path):
    run_killed_and_resumed(tmp_path, "--precision", "bf16")
    assert_same_weights(tmp_path / "whole", tmp_path / "killed")
