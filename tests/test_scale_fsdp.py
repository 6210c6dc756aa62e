"""Sharded training (``--parallel fsdp``, FSDP2) over 2 CPU processes (gloo): one step equals
the single-process step of the same global batch (float64), a checkpoint of a sharded run
loads in one process, a killed sharded run resumes to the weights of an uninterrupted one, and
``--parallel fsdp`` without torchrun is refused."""
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ntm_engine import checkpoint as ckpt
from ntm_engine.training import (ConfigError, DataSource, build_model, derive_seed, load_run,
                                 make_config)
from ntm_engine.training.determinism import seed_everything
from ntm_engine.training.distributed import World
from ntm_engine.training.factory import make_objective
from ntm_engine.training.fsdp import FullStates
from ntm_engine.training.objectives import Batch
from ntm_engine.training.optim import EMA, adamw, guarded_update, learning_rate, set_lr
from tests.run_testutils import TINY, trainer
from tests.test_scale_distributed import WORLD, _free_port, run_killed_and_resumed

# depth 2: two sharded predictor blocks, recomputed in the backward (checkpointing + FSDP)
MODEL = dict(TINY, depth=2)


def _step_config(transporter, steps):
    """A toy run (its data and model follow the default dtype: float64 in these tests), with
    a clip that binds, so the step depends on the global gradient norm."""
    return make_config("two_moons", model=dict(MODEL, transporter=transporter, steps=steps),
                       batch_size=16,
                       iters=1, warmup=1, eval_samples=0, grad_clip=0.05,
                       checkpoint_predictor=True)


def _sharded_step(rank, port, cfg, out, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        t = trainer(cfg, out, world=World(rank=rank, size=WORLD), parallel="fsdp")
        rec = t.train_step()
        io = FullStates()
        grads = {n: p.grad.full_tensor() for n, p in t.model.named_parameters()}
        got = dict(model=io.model_state(t.model), ema=io.model_state(t.ema.model),
                   optimizer=io.optimizer_state(t.model, t.session.optimizer), grads=grads,
                   grad_norm=rec["grad_norm"],
                   local=sum(p.to_local().numel() for p in t.model.parameters()))
        torch.save(got, Path(result) / f"rank{rank}.pt")
        t.close()
    finally:
        dist.destroy_process_group()


def _single_process_step(cfg):
    """The same step in one process: the global batch, each half with its rank's model
    noise, then clip, AdamW and EMA as the trainer makes them."""
    seed = cfg.optim.seed
    seed_everything(derive_seed(seed, 0, "init"))
    model = build_model(cfg)
    ema = EMA.of(model, cfg.optim)
    optimizer = adamw(model, cfg.optim)
    set_lr(optimizer, learning_rate(cfg.optim, 0))
    objective = make_objective(cfg, model)
    x, y = DataSource(cfg).batch(0)
    half = cfg.optim.batch_size // WORLD
    loss = 0.0
    for r in range(WORLD):
        torch.manual_seed(derive_seed(seed, 0, "global"))
        g = torch.Generator().manual_seed(derive_seed(seed, 0, f"model/rank{r}"))
        loss = loss + objective.loss(Batch(x[r * half:(r + 1) * half], y, g))[0].mean() / WORLD
    finite, gnorm = guarded_update(loss, model, optimizer, ema, grad_clip=cfg.optim.grad_clip,
                                   ema_updates=0)
    assert finite
    return dict(model=model.state_dict(), ema=ema.model.state_dict(),
                optimizer=optimizer.state_dict(), grad_norm=gnorm,
                grads={n: p.grad for n, p in model.named_parameters()})


def _close(got, want, what):
    """float64: equal to 1e-10 relative (of the tensor's largest value)."""
    scale = float(want.abs().max()) + 1e-30
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * scale, msg=what)


@pytest.mark.slow
@pytest.mark.timeout(180)   # a gloo deadlock fails here instead of stalling CI
@pytest.mark.parametrize("transporter,steps", [("coupling", 4), ("autoregressive", 4),
                                               ("coupling", [2, 4, 8])])
def test_one_sharded_step_equals_the_single_process_step(tmp_path, transporter, steps):
    """Several step counts: each rank's 8 rows make three step groups (3, 3, 2 rows)."""
    cfg = _step_config(transporter, steps)
    mp.spawn(_sharded_step, args=(_free_port(), cfg.to_dict(), str(tmp_path / "run"),
                                  str(tmp_path)), nprocs=WORLD)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        want = _single_process_step(cfg)
    finally:
        torch.set_default_dtype(default)
    got = torch.load(tmp_path / "rank0.pt")
    other = torch.load(tmp_path / "rank1.pt")
    assert other["model"] == {} and other["optimizer"] == {}   # rank 0 alone gathers
    assert got["grad_norm"] > cfg.optim.grad_clip   # the clip bound: the global norm counts
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-10)
    for part in ("model", "ema", "grads"):
        assert set(got[part]) == set(want[part])
        for k, v in want[part].items():
            assert got[part][k].dtype == torch.float64
            _close(got[part][k], v, f"{part} {k}")
    assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]
    for i, st in want["optimizer"]["state"].items():
        for k in ("exp_avg", "exp_avg_sq"):
            _close(got["optimizer"]["state"][i][k], st[k], f"optimizer {i} {k}")
    # each rank holds about half of the parameters
    total = sum(v.numel() for v in want["model"].values())
    assert got["local"] + other["local"] == total and got["local"] < 0.6 * total


def test_parallel_fsdp_without_torchrun_or_an_unknown_parallel_is_refused(tmp_path,
                                                                          monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    cfg = make_config("two_moons", model=TINY, batch_size=8, iters=1)
    with pytest.raises(ConfigError, match=r"--parallel fsdp .* torchrun .* single process"):
        trainer(cfg, tmp_path / "run", parallel="fsdp")
    assert not (tmp_path / "run").exists()   # refused before anything was written
    with pytest.raises(ConfigError, match="--parallel must be one of ddp, fsdp, got 'zero'"):
        trainer(cfg, tmp_path / "run", parallel="zero")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_sharded_run_resumes_and_its_checkpoint_serves_one_process(tmp_path):
    run_killed_and_resumed(tmp_path, "--parallel", "fsdp")
    a, b = ckpt.load_latest(tmp_path / "whole"), ckpt.load_latest(tmp_path / "killed")
    assert a.step == b.step == 12
    for part in ("model", "ema"):
        for k, v in getattr(a, part).items():
            assert v.dtype == torch.float32 and torch.equal(v, getattr(b, part)[k]), (part, k)
    assert a.state["optimizer"]["state"].keys() == b.state["optimizer"]["state"].keys()

    # the checkpoint is what one process writes: it loads, samples, and trains on unsharded
    run = load_run(tmp_path / "whole", log=lambda m: None)
    model = build_model(run.config)
    assert set(a.model) == set(model.state_dict())
    optimizer = adamw(model, run.config.optim)
    optimizer.load_state_dict(a.state["optimizer"])   # integer keys, single-process layout
    assert len(optimizer.state) == len(list(model.parameters()))
    x = run.model.sample(6, generator=torch.Generator().manual_seed(0))
    assert x.shape == (6, 1, 8, 8) and bool(torch.isfinite(x).all())
    t = trainer(run.config.replace(iters=13), tmp_path / "whole", resume=True)
    assert t.step == 12
    summary = t.run()
    assert summary["step"] == 13 and summary["skipped"] == 0
