"""The training loop: deterministic data, schedule, EMA, exact resume, non-finite handling,
configuration errors.  Tiny real NTMs on CPU, a few seconds each."""
import json
import math

import pytest
import torch

from ntm_engine import checkpoint as ckpt
from ntm_engine.training import (EMA, ConfigError, DataSource, NonFiniteLossError,
                                 config_differences, derive_seed, learning_rate, make_config,
                                 read_metrics)

from run_testutils import TINY, tiny_cfg, trainer

def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r.get("type") == "train"}


# ----------------------------------------------------------------------------- data, schedule

def test_data_is_a_function_of_seed_and_step():
    cfg = tiny_cfg("digits", True)
    a, b = DataSource(cfg), DataSource(cfg)
    xa, ya = a.batch(7)
    a.batch(3)  # other calls in between change nothing
    xb, yb = b.batch(7)
    assert torch.equal(xa, a.batch(7)[0]) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(8)[0], xa)
    other = DataSource(cfg.replace(seed=1))
    assert not torch.equal(other.batch(7)[0], xa)
    toy = DataSource(tiny_cfg("checkerboard"))
    assert torch.equal(toy.batch(5)[0], DataSource(tiny_cfg("checkerboard")).batch(5)[0])
    assert toy.batch(5)[1] is None


def test_digits_epochs_visit_every_image_once():
    cfg = tiny_cfg("digits", True, batch_size=100)
    d = DataSource(cfg)
    N = len(d.batches.ds)
    idx = torch.cat([d.batches.indices(s) for s in range(math.ceil(2 * N / 100))])
    assert torch.equal(idx[:N].sort().values, torch.arange(N))
    assert torch.equal(idx[N:2 * N].sort().values, torch.arange(N))
    assert not torch.equal(idx[:N], idx[N:2 * N])  # reshuffled each epoch


def test_derive_seed_streams_differ():
    assert derive_seed(0, 1, "data") != derive_seed(0, 1, "model")
    assert derive_seed(0, 1, "data") != derive_seed(1, 0, "data")
    assert derive_seed(3, 4, "x") == derive_seed(3, 4, "x")


def test_learning_rate_warmup_then_cosine():
    cfg = tiny_cfg(lr=1e-3, warmup=10, iters=110, min_lr_ratio=0.1)
    lrs = [learning_rate(cfg.optim, s) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b + 1e-15 for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b - 1e-15 for a, b in zip(lrs[10:], lrs[11:]))
    assert learning_rate(cfg.optim, 110) == pytest.approx(1e-4)
    assert learning_rate(cfg.optim, 60) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    timed = cfg.replace(iters=None, minutes=1.0)
    assert learning_rate(timed.optim, 50, elapsed_s=30.0) == pytest.approx(1e-4 + 0.9e-3 * 0.5)


def test_ema_tracks_weights():
    m = torch.nn.Linear(3, 2)
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.model.parameters()]
    ema.update(m, num_updates=100)  # decay 0.5: halfway
    for b, e, p in zip(before, ema.model.parameters(), m.parameters()):
        torch.testing.assert_close(e, 0.5 * (b + p))
        assert not e.requires_grad


@pytest.mark.parametrize("warmup,n", [(10.0, 0), (10.0, 1490), (4.0, 1490), (4.0, 9000),
                                      (1.5, 3)])
def test_ema_ramp_follows_the_warmup(warmup, n):
    """The update's decay is min(decay, (1+n)/(warmup+n)): from all zeros towards all ones the
    average moves by exactly 1 - d."""
    m = torch.nn.Linear(3, 2)
    ema = EMA(m, decay=0.998, warmup=warmup)
    with torch.no_grad():
        for e in ema.model.parameters():
            e.zero_()
        for p in m.parameters():
            p.fill_(1.0)
    ema.update(m, num_updates=n)
    d = min(0.998, (1 + n) / (warmup + n))
    for e in ema.model.parameters():
        torch.testing.assert_close(e, torch.full_like(e, 1 - d))


@pytest.mark.parametrize("bad", [1.0, 0.5, math.inf])
def test_ema_refuses_a_warmup_that_never_averages(bad):
    with pytest.raises(ValueError, match=f"EMA warmup must be a finite number > 1, got {bad}"):
        EMA(torch.nn.Linear(2, 2), decay=0.9, warmup=bad)


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("dataset,conditional", [("digits", True), ("two_moons", False)])
def test_resume_reproduces_uninterrupted_run_bitwise(tmp_path, dataset, conditional):
    cfg = tiny_cfg(dataset, conditional, iters=24, ckpt_every=8, batch_size=16)
    full = trainer(cfg, tmp_path / "full")
    full.run()
    part = trainer(cfg, tmp_path / "part")
    part.run(stop_after=12)  # "killed" after step 12 (its end checkpoint is at 12)
    assert part.step == 12
    resumed = trainer(cfg, tmp_path / "part", resume=True)
    assert resumed.step == 12
    resumed.run()
    la, lb = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert sorted(lb) == list(range(1, 25))
    for s in range(13, 25):
        assert la[s] == lb[s], f"step {s}: {la[s]} != {lb[s]}"
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(full.ema.model.state_dict().values(), resumed.ema.model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_falls_back_past_a_corrupt_checkpoint(tmp_path):
    cfg = tiny_cfg(iters=30, ckpt_every=10)
    t = trainer(cfg, tmp_path)
    t.run(stop_after=20)
    steps = [s for s, _ in ckpt.list_checkpoints(tmp_path)]
    assert steps == [10, 20]
    bad = tmp_path / "checkpoints" / "step_00000020" / "model.safetensors"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    msgs = []
    r = trainer(cfg, tmp_path, resume=True, log=msgs.append)
    assert r.step == 10
    assert any("sha256" in m and "step_00000020" in m for m in msgs)
    assert not (tmp_path / "checkpoints" / "step_00000020").exists()  # moved aside
    assert list((tmp_path / "checkpoints").glob("corrupt-step_00000020-*"))
    r.run()
    assert r.step == 30
    recs = [x["step"] for x in read_metrics(tmp_path) if x.get("type") == "train"]
    assert recs == list(range(1, 31))  # steps 11..20 of the lost segment are not duplicated


# ----------------------------------------------------------------------------- non-finite

def test_nonfinite_loss_is_skipped_and_counted(tmp_path):
    cfg = tiny_cfg(iters=12, ckpt_every=100)
    t = trainer(cfg, tmp_path, fault_nonfinite_steps=[4, 5, 10])
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    summary = t.run()
    assert summary["step"] == 12 and summary["skipped"] == 3
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs if r["type"] == "nonfinite"] == [4, 5, 10]
    assert all(torch.isfinite(v).all() for v in t.model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in t.model.state_dict().items())


def test_too_many_nonfinite_losses_stop_and_keep_last_good_checkpoint(tmp_path):
    cfg = tiny_cfg(iters=40, ckpt_every=5, max_nonfinite=4)
    t = trainer(cfg, tmp_path, fault_nonfinite_steps=range(8, 41))
    with pytest.raises(NonFiniteLossError, match="4 consecutive non-finite"):
        t.run()
    assert t.step == 11
    ck = ckpt.load_latest(tmp_path)
    assert ck.step == 10  # written at step 10 (3 skipped steps in it), nothing after the stop
    assert all(torch.isfinite(v).all() for v in ck.model.values())
    events = [r.get("event") for r in read_metrics(tmp_path)]
    assert "nonfinite_stop" in events


# ----------------------------------------------------------------------------- config errors

@pytest.mark.parametrize("kw,match", [
    (dict(dataset="mnist"), "unknown dataset"),
    (dict(dataset="two_moons", class_conditional=True), "labelled data"),
    (dict(model=dict(steps=0)), "steps-T"),
    (dict(lr=-1e-3), "--lr must be > 0"),
    (dict(model=dict(width=30, heads=4)), "divisible"),
    (dict(model=dict(patch_size=3)), "patch-size 3 must divide"),
    (dict(iters=0), "--iters must be >= 1"),
    (dict(ckpt_every=0), "--ckpt-every must be >= 1, got 0"),
    (dict(min_lr_ratio=2.0), r"--min-lr-ratio must lie in \[0, 1\], got 2.0"),
    (dict(model=dict(data_shape=[2])), "does not match dataset"),
    (dict(bogus=1), "unknown training options"),
])
def test_config_errors(kw, match):
    kw = dict(kw)
    dataset = kw.pop("dataset", "digits")
    cond = kw.pop("class_conditional", False)
    model = dict(TINY, **kw.pop("model", {}))
    kw.setdefault("iters", 10)
    with pytest.raises(ConfigError, match=match):
        make_config(dataset, cond, model=model, **kw)


def test_model_constructor_errors_become_config_errors(tmp_path):
    cfg = tiny_cfg()
    cfg = cfg.replace(model={**cfg.model, "t_min_max": 0.9})  # beyond t_1: the NTM refuses it
    with pytest.raises(ConfigError, match="invalid model configuration"):
        trainer(cfg, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing written before the error


def test_resume_with_another_model_config_is_refused(tmp_path):
    cfg = tiny_cfg(iters=5, ckpt_every=5)
    trainer(cfg, tmp_path).run()
    other = cfg.to_dict()
    other["model"]["width"] = 64
    assert config_differences(cfg, other) == ["model.width: checkpoint 32 vs requested 64"]
    with pytest.raises(ConfigError, match="another configuration"):
        trainer(other, tmp_path, resume=True)
    with pytest.raises(ConfigError, match="--resume"):
        trainer(cfg, tmp_path)  # existing run without --resume


def test_time_budget_ends_the_run(tmp_path):
    cfg = tiny_cfg(iters=None, minutes=0.002, ckpt_every=1000)
    t = trainer(cfg, tmp_path)
    summary = t.run()
    assert summary["reason"] == "budget (minutes)" and summary["step"] >= 1
    assert summary["elapsed_s"] >= 0.12
    assert ckpt.load_latest(tmp_path).step == summary["step"]
    # schedule: the cosine follows elapsed time when only --minutes is given
    assert learning_rate(cfg.optim, 10**6, elapsed_s=0.0) == pytest.approx(cfg.optim.lr)
    assert learning_rate(cfg.optim, 10, elapsed_s=0.12) == pytest.approx(
        cfg.optim.lr * cfg.optim.min_lr_ratio)


def test_checkpoints_record_the_model_code():
    from ntm_engine.training import check_model_code, model_code_fingerprint

    msgs = []
    check_model_code({"model_code_sha256": model_code_fingerprint()}, "ck", msgs.append)
    check_model_code({}, "ck", msgs.append)  # older checkpoints: nothing to compare
    assert msgs == []
    check_model_code({"model_code_sha256": "0" * 64}, "ck", msgs.append)
    assert len(msgs) == 1 and "different model code" in msgs[0]


def test_rng_states_roundtrip_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    from ntm_engine.training import rng_states, set_rng_states

    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    g = torch.Generator().manual_seed(4)
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, None,
                         {"config": {}, "rng": rng_states(g)})
    expect = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=g))
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    st = ckpt.load_latest(tmp_path).state["rng"]
    set_rng_states(st)
    g2 = torch.Generator()
    g2.set_state(st["data_generator"])
    got = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=g2))
    assert torch.equal(got[0], expect[0]) and got[1] == expect[1] and got[2] == expect[2]
    assert torch.equal(got[3], expect[3])
