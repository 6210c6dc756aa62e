"""Tiny training runs shared by the training-loop tests: a small NTM config on a toy dataset
and a quiet CPU :class:`~ntm_engine.training.Trainer`."""
import os
import signal
import subprocess
import time
from typing import Callable

import torch

from ntm_engine import checkpoint as ckpt
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


def signal_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float,
                sig: int) -> int:
    """Send ``sig`` to ``proc`` (started with ``stderr=PIPE``) once ``ready()`` holds, polling
    every 20 ms for at most ``timeout`` seconds, and return its exit status; fails if it ended
    first (with its stderr's tail).  ``proc`` is killed if anything fails."""
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if ready():
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the process ended before it could be signalled: " + \
            proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, sig)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float) -> None:
    """SIGKILL ``proc`` once ``ready()`` holds (:func:`signal_when`)."""
    try:
        assert signal_when(proc, ready, timeout, signal.SIGKILL) == -signal.SIGKILL
    finally:
        proc.stderr.close()


def assert_same_weights(a, b) -> None:
    """The newest checkpoints of run folders ``a`` and ``b`` hold the same step and the same
    weights and EMA weights, bit for bit."""
    ca, cb = ckpt.load_latest(a), ckpt.load_latest(b)
    assert ca.step == cb.step
    for name, wa, wb in (("model", ca.model, cb.model), ("ema", ca.ema, cb.ema)):
        assert wa.keys() == wb.keys(), name
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}.{k} differs"
