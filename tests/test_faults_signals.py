"""Signals and locks (issue 24, item 3): SIGTERM or SIGINT mid-run ends ``ntm train``
cleanly (exit status 128 + N, a checkpoint at the stop step, the reason in
``metrics.jsonl``) and the resumed run ends with the weights of an uninterrupted one, bit for
bit; while a run holds its folder, a second ``ntm train`` there is refused naming its pid."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ntm_engine import checkpoint as ckpt
from ntm_engine import cli
from ntm_engine.training import read_metrics

from run_testutils import TINY_ARGS, assert_same_weights, signal_when

ROOT = Path(__file__).resolve().parents[1]
ITERS = 40
ARGS = ["--dataset", "two_moons", *TINY_ARGS, "--iters", str(ITERS), "--ckpt-every", "10",
        "--log-every", "1", "--eval-every", "1000", "--no-plots"]


def train_steps(run):
    return [r["step"] for r in read_metrics(run) if r.get("type") == "train"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("signals") / "whole"
    assert cli.main(["train", *ARGS, "--out", str(run)]) == 0
    return run


def start(run: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "ntm_engine", "train", *ARGS, "--out",
                             str(run), "--threads", "1", "--throttle", "0.05"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def holder_is_refused(run: Path, pid: int) -> bool:
    """A second ``ntm train --resume`` on ``run`` (held by ``pid``) is refused naming that
    pid (before it writes anything)."""
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--out", str(run), "--resume", "--no-progress"])
    assert f"another training process (pid {pid}) is using {run} right now" in str(e.value)
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_and_the_resumed_run_is_bitwise_the_same(tmp_path, sig,
                                                                      uninterrupted):
    run = tmp_path / "signalled"
    proc = start(run)
    # past the checkpoint of step 10 and between two checkpoints; the folder is locked by then
    status = signal_when(proc, lambda: max(train_steps(run) or [0]) >= 13 and
                         holder_is_refused(run, proc.pid), timeout=120, sig=sig)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close(), proc.stderr.close()
    assert status == 128 + sig, err[-2000:]
    assert "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    stopped = summary["step"]
    assert summary["reason"] == f"signal {int(sig)}" and 13 <= stopped < ITERS
    assert f"stopped by signal {int(sig)} at step {stopped}" in err
    assert ckpt.load_latest(run).step == stopped   # a checkpoint at the stop step
    end = [r for r in read_metrics(run) if r.get("event") == "end"][-1]
    assert end["reason"] == f"signal {int(sig)}" and end["step"] == stopped
    assert train_steps(run) == list(range(1, stopped + 1))

    assert cli.main(["train", "--out", str(run), "--resume", "--no-progress", "--no-plots"]) == 0
    assert train_steps(run) == list(range(1, ITERS + 1))
    assert_same_weights(run, uninterrupted)
