"""Tiny training runs shared by the training-loop tests: a small NTM config on a toy dataset
and a quiet CPU :class:`~ntm_engine.training.Trainer`."""
import os
import signal
import subprocess
import time
from typing import Callable

from ntm_engine.training import Trainer, make_config

TINY = dict(width=32, depth=1, heads=2, transporter_layers=2, transporter_hidden=32)
# the same model and a small batch as ``ntm train`` arguments
TINY_ARGS = ["--width", "32", "--depth", "1", "--heads", "2", "--transporter-layers", "2",
             "--transporter-hidden", "32", "--batch-size", "32", "--no-progress"]


def tiny_cfg(dataset="two_moons", conditional=False, model=None, **train):
    kw = dict(batch_size=32, iters=40, warmup=5, log_every=1, eval_every=1000, ckpt_every=10,
              eval_samples=0)
    kw.update(train)
    return make_config(dataset, conditional, model=dict(TINY, **(model or {})), **kw)


def trainer(cfg, out, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("plots", False)
    kw.setdefault("log", lambda m: None)
    return Trainer(cfg, out, device="cpu", **kw)


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float) -> None:
    """SIGKILL ``proc`` (started with ``stderr=PIPE``) once ``ready()`` holds, polling every
    20 ms for at most ``timeout`` seconds; fails if it ended first (with its stderr's tail)."""
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if ready():
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the process ended before it could be killed: " + \
            proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
