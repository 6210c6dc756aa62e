"""Data-parallel training over 2 CPU processes (gloo): the averaged gradient of one step is the
gradient of the same global batch in one process, and a killed 2-process run resumes to the
weights of an uninterrupted one."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ntm_engine import checkpoint as ckpt
from ntm_engine.data import digits_data
from ntm_engine.training import (ConfigError, DataSource, TrainConfig, build_model, derive_seed,
                                 make_config)
from ntm_engine.training.determinism import seed_everything
from ntm_engine.training.distributed import World
from ntm_engine.training.factory import make_objective
from ntm_engine.training.objectives import Batch
from tests.run_testutils import TINY, trainer

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_step(rank, port, cfg, out, grads_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        t = trainer(cfg, out, world=World(rank=rank, size=WORLD))
        assert type(t.objective.forward).__name__ == "DistributedDataParallel"
        t.train_step()
        torch.save({n: p.grad for n, p in t.model.named_parameters() if p.grad is not None},
                   Path(grads_dir) / f"rank{rank}.pt")
        t.close()
    finally:
        dist.destroy_process_group()


def _steps_over_a_nonfinite_one(rank, port, cfg, out, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        t = trainer(cfg, out, world=World(rank=rank, size=WORLD), fault_nonfinite_steps=[2])
        recs = [t.train_step() for _ in range(3)]
        torch.save([(r["finite"], r["loss"]) for r in recs], Path(result_dir) / f"r{rank}.pt")
        t.close()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_ddp_path_steps_over_a_nonfinite_loss(tmp_path):
    """Under DDP a step whose loss is not finite (on any rank) skips its backward and update
    on every rank, and the next DDP forward and backward run as usual."""
    cfg = make_config("digits", True, model=TINY, batch_size=8, iters=3, eval_samples=0)
    mp.spawn(_steps_over_a_nonfinite_one, args=(_free_port(), cfg.to_dict(),
                                                str(tmp_path / "run"), str(tmp_path)),
             nprocs=WORLD)
    for r in range(WORLD):
        finite = [f for f, _ in torch.load(tmp_path / f"r{r}.pt")]
        assert finite == [True, False, True]


def _reference_gradient(cfg: TrainConfig):
    """The gradient of the global batch's mean loss in one process, each half with the model
    noise its rank draws."""
    seed = cfg.optim.seed
    seed_everything(derive_seed(seed, 0, "init"))
    model = build_model(cfg)
    objective = make_objective(cfg, model)
    x, y = DataSource(cfg).batch(0)
    half = cfg.optim.batch_size // WORLD
    loss = 0.0
    for r in range(WORLD):
        rows = slice(r * half, (r + 1) * half)
        torch.manual_seed(derive_seed(seed, 0, "global"))
        g = torch.Generator().manual_seed(derive_seed(seed, 0, f"model/rank{r}"))
        loss = loss + objective.loss(Batch(x[rows], y[rows], g, 0, 0.0))[0].mean() / WORLD
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def digits_token_file(path: Path) -> str:
    """Condition tokens [2, 3] for the digits: each class's own random sequence."""
    data = digits_data()
    table = np.random.default_rng(0).standard_normal((10, 2, 3)).astype(np.float32)
    np.savez(path, cond=table[data.train.labels.numpy()], test_cond=table[data.test.labels.numpy()])
    return str(path)


def conditioned_digits(kind: str, tmp_path: Path, **kw) -> TrainConfig:
    """A tiny digits config conditioned on labels or on condition tokens."""
    if kind == "labels":
        return make_config("digits", True, model=TINY, **kw)
    return make_config("digits", model=TINY, cond=digits_token_file(tmp_path / "tok.npz"), **kw)


@pytest.mark.slow
@pytest.mark.timeout(180)   # a gloo deadlock fails here instead of stalling CI
@pytest.mark.parametrize("kind", ["labels", "tokens"])
def test_averaged_gradient_equals_the_global_batch_gradient(tmp_path, kind):
    """(Condition tokens: each rank's rows carry their own tokens through the DDP forward.)"""
    cfg = conditioned_digits(kind, tmp_path, batch_size=16, iters=1,
                             eval_samples=0).replace(grad_clip=None)
    mp.spawn(_one_step, args=(_free_port(), cfg.to_dict(), str(tmp_path / "run"), str(tmp_path)),
             nprocs=WORLD)
    ref = _reference_gradient(cfg)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert set(ranks[0]) == set(ranks[1]) == set(ref)
    for name, want in ref.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name   # the same on every rank
        scale = float(want.abs().max()) + 1e-12
        torch.testing.assert_close(ranks[0][name], want, rtol=1e-5, atol=1e-6 * scale,
                                   msg=name)
    # the reference is not trivially close: one half alone is a different gradient
    assert any(not torch.allclose(ranks[0][n], 2 * ref[n]) for n in ref)


def test_the_global_batch_must_split_evenly():
    cfg = make_config("digits", model=TINY, batch_size=15, iters=1)
    with pytest.raises(ConfigError, match="--batch-size 15 .* divisible by the number of "
                                          "processes 2"):
        trainer(cfg, "/nonexistent/never-written", world=World(rank=0, size=2))


@pytest.mark.parametrize("dataset", ["digits", "checkerboard", "digits+tokens"])
def test_each_rank_reads_its_rows_of_the_global_batch(dataset, tmp_path):
    if dataset == "digits+tokens":
        cfg = conditioned_digits("tokens", tmp_path, batch_size=12, iters=1)
    else:
        cfg = make_config(dataset, dataset == "digits", model=TINY, batch_size=12, iters=1)
    whole = DataSource(cfg)
    for step in (0, 7):
        x, y = whole.batch(step)
        for r in range(3):
            rows = World(rank=r, size=3).rows(12)
            xr, yr = DataSource(cfg, rows=rows).batch(step)
            assert xr.shape[0] == 4 and torch.equal(xr, x[rows]), (dataset, step, r)
            assert (yr is None) == (y is None)
            if dataset == "digits+tokens":      # each row's tokens go with it
                assert yr.labels is None and torch.equal(yr.tokens, y.tokens[rows])
            elif y is not None:
                assert torch.equal(yr, y[rows])


def _torchrun(out, *extra, throttle=0.0):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={WORLD}", "-m", "ntm_engine", "train", "--dataset", "digits",
           "--iters", "12", "--batch-size", "16", "--width", "32", "--depth", "1", "--heads",
           "2", "--transporter-layers", "2", "--transporter-hidden", "32", "--ckpt-every", "4",
           "--eval-every", "1000", "--log-every", "2", "--no-progress", "--no-plots",
           "--throttle", str(throttle), "--out", str(out), *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants (torchrun starts its workers in sessions of their
    own, so killing its process group would leave them running)."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            kids = Path(f"/proc/{pids[i]}/task/{pids[i]}/children").read_text().split()
        except OSError:
            kids = []
        pids += [int(k) for k in kids]
        i += 1
    for p in reversed(pids):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_killed_and_resumed(tmp_path, *extra) -> int:
    """A 12-step 2-process run in ``whole``; the same run in ``killed``, SIGKILLed after its
    checkpoint of step 4 and resumed to the end.  Returns the step the killed run stopped at."""
    whole = _torchrun(tmp_path / "whole", *extra)
    assert whole.wait(timeout=300) == 0, whole.stdout.read().decode()[-3000:]
    killed = _torchrun(tmp_path / "killed", *extra, throttle=0.4)
    deadline = time.time() + 240
    while not any(s >= 4 for s, _ in ckpt.list_checkpoints(tmp_path / "killed")):
        assert killed.poll() is None and time.time() < deadline, killed.stdout.read().decode()
        time.sleep(0.2)
    _kill_tree(killed.pid)
    killed.wait()
    stopped_at = ckpt.list_checkpoints(tmp_path / "killed")[-1][0]
    assert stopped_at < 12
    resumed = _torchrun(tmp_path / "killed", *extra, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()[-3000:]
    return stopped_at


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_two_process_run_resumes(tmp_path):
    stopped_at = run_killed_and_resumed(tmp_path)
    a, b = ckpt.load_latest(tmp_path / "whole"), ckpt.load_latest(tmp_path / "killed")
    assert a.step == b.step == 12
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
    events = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text()
              .splitlines()]
    assert any(e.get("event") == "resume" and 0 < e["step"] <= stopped_at for e in events), \
        (stopped_at, [e for e in events if e["type"] in ("event", "checkpoint")])
