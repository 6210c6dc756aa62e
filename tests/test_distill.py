"""Self-distillation (``ntm_engine.training.distiller``, ``ntm distill``): a short run learns the analytic
posterior mean of an exact Gaussian teacher; killed + resumed runs repeat the uninterrupted
one; non-finite losses are skipped; the command line, ``--denoiser`` for sample/eval, and its
error messages.  Teachers are tiny NTMs written straight into run folders."""
import json
import math

import pytest
import torch

from ntm_engine import checkpoint as ckpt
from ntm_engine.data import sample_toy
from ntm_engine.training import (ConfigError, Distiller, NonFiniteLossError, build_model,
                                 load_denoiser, make_config, make_distill_config,
                                 model_code_fingerprint, read_metrics)

from test_cli import fast_classifier, run_cli  # noqa: F401  (an autouse fixture)

TINY_NTM = dict(width=16, depth=1, heads=2, transporter_hidden=16, context_dim=16)
TINY_DENOISER = dict(hidden=32, blocks=1, context_dim=16)


def save_teacher(run, dataset="two_moons", conditional=False, perturb=0.0, **model):
    """A teacher run folder holding one checkpoint of a new (optionally perturbed) NTM."""
    cfg = make_config(dataset, conditional, model={**TINY_NTM, **model}, iters=1)
    torch.manual_seed(0)
    net = build_model(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g))
    ckpt.save_checkpoint(run, 7, net.state_dict(), net.state_dict(),
                         {"config": cfg.to_dict(), "model_code_sha256": model_code_fingerprint()})
    return run


def gaussian_teacher(run, m=0.5, s=0.3):
    """Identity transporter + new predictor: the exact reverse process of N(m, s^2 I) data."""
    return save_teacher(run, transporter_layers=0, shift=1.0, data_mean=m, data_std=s,
                        t_min_max=0.2)


def digits_teacher(run, conditional=True):
    return save_teacher(run, "digits", conditional, perturb=0.05, transporter_layers=2)


def distiller(run, out, resume=False, fault=(), **cfg_kw):
    teacher_ck = ckpt.resolve(run)
    teacher = build_model(teacher_ck.config)
    teacher.load_state_dict(teacher_ck.ema)
    cfg = make_distill_config(teacher_ck, **cfg_kw)
    return Distiller(cfg, out, teacher, resume=resume, device="cpu", progress=False,
                     log=lambda m: None, fault_nonfinite_steps=fault)


def train_losses(out):
    return {r["step"]: r["loss"] for r in read_metrics(out) if r.get("type") == "train"}


# ----------------------------------------------------------------------------- learning

def test_short_distillation_learns_the_analytic_posterior_mean(tmp_path):
    m, s, t_d = 0.5, 0.3, 0.2
    run = gaussian_teacher(tmp_path / "teacher", m, s)
    d = distiller(run, tmp_path / "den", t_min=t_d, denoiser=TINY_DENOISER, iters=80,
                  batch_size=64, updates_per_batch=6, lr=3e-3, warmup=10, log_every=10,
                  eval_every=1000, ckpt_every=1000, eval_n=2000)
    summary = d.run()
    # (seen: loss / 7000, error / 150, held-out MSE / 20000; the bounds leave 7x or more)
    losses = train_losses(tmp_path / "den")
    first, last = losses[10], losses[80]
    assert last < 0.01 * first, (first, last)
    # the teacher's targets are E[x | x_{t_0}] of N(m, s^2) data (see test_denoiser.py), so the
    # denoiser must approach g*(u) = m + k (u - (1-t_d) m) on the data's u = x_{t_0}
    x = sample_toy("two_moons", 4000, generator=torch.Generator().manual_seed(5))
    u = (1 - t_d) * x + t_d * torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    c, v = 1 - t_d, s * s
    ref = m + c * v / (c * c * v + t_d ** 2) * (u - c * m)
    with torch.no_grad():
        err = (d.ema.model(u, t_d) - ref).pow(2).mean().sqrt()
    err0 = (u - ref).pow(2).mean().sqrt()              # the new (identity) denoiser's error
    assert err < 0.05 * err0, (float(err), float(err0))
    # held-out MSE vs the targets: far below the transporter inverse's (no denoising)
    assert summary["test_mse"] < 1e-3 * summary["test_mse_transporter"], summary
    assert summary["step"] == 80 and summary["reason"] == "budget (iters)"


# ----------------------------------------------------------------------------- resume, faults

def test_killed_and_resumed_run_repeats_the_uninterrupted_one(tmp_path):
    run = digits_teacher(tmp_path / "teacher")
    kw = dict(t_min=0.05, denoiser=TINY_DENOISER, iters=14, batch_size=16, updates_per_batch=2,
              warmup=3, log_every=1, eval_every=7, ckpt_every=4, eval_n=64)
    full = distiller(run, tmp_path / "full", **kw)
    full.run()
    part = distiller(run, tmp_path / "part", **kw)
    part.run(stop_after=10)
    # a kill after step 10, before its checkpoint: the newest one left is step 8
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "part")] == [8, 10]
    import shutil
    shutil.rmtree(tmp_path / "part" / "checkpoints" / "step_00000010")
    resumed = distiller(run, tmp_path / "part", resume=True, **kw)
    assert resumed.step == 8
    resumed.run()
    la, lb = train_losses(tmp_path / "full"), train_losses(tmp_path / "part")
    assert sorted(lb) == list(range(1, 15))            # no duplicated or missing records
    assert all(math.isfinite(la[s]) for s in la)
    for s in range(1, 15):
        assert la[s] == lb[s], f"step {s}: {la[s]} != {lb[s]}"
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(full.ema.model.state_dict().values(),
                    resumed.ema.model.state_dict().values()):
        assert torch.equal(a, b)
    evals = [r for r in read_metrics(tmp_path / "part") if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [7, 14] and evals[-1]["test_mse"] == \
        full.last_eval["test_mse"]
    den, _ = load_denoiser(tmp_path / "part", "cpu")
    for a, b in zip(den.state_dict().values(), full.ema.model.state_dict().values()):
        assert torch.equal(a, b)


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path):
    run = gaussian_teacher(tmp_path / "teacher")
    kw = dict(denoiser=TINY_DENOISER, iters=10, batch_size=16, updates_per_batch=2,
              log_every=1, eval_every=1000, ckpt_every=2, eval_n=64, max_nonfinite=2)
    d = distiller(run, tmp_path / "a", fault=(3,), **kw)
    d.train_step(), d.train_step()
    before = [p.clone() for p in d.model.parameters()]
    ema_before = [p.clone() for p in d.ema.model.parameters()]
    rec = d.train_step()
    assert not rec["finite"] and math.isnan(rec["loss"]) and d.skipped == 1 and d.step == 3
    assert all(torch.equal(a, b) for a, b in zip(before, d.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(ema_before, d.ema.model.parameters()))
    assert d.train_step()["finite"] and d.nonfinite_run == 0
    d = distiller(run, tmp_path / "b", fault=(3, 5, 6), **kw)
    with pytest.raises(NonFiniteLossError, match=r"2 consecutive non-finite losses .* at step 6;"
                       r" the last good checkpoint is .*step_00000004"):
        d.run()
    assert [r["step"] for r in read_metrics(tmp_path / "b") if r["type"] == "nonfinite"] == \
        [3, 5, 6]


def test_config_errors(tmp_path):
    run = gaussian_teacher(tmp_path / "teacher")        # 4 steps, shift 1: t_1 = 0.25
    with pytest.raises(ConfigError, match=r"--t-min \(t_d, the t_0 of the distillation grid\) "
                       r"must lie in \(0, t_1 = 0.25\) for the teacher's 4 steps, got 0.0 "
                       r"\(at t_0 = 0 the posterior mean is x_\{t_0\} itself"):
        distiller(run, tmp_path / "x", t_min=0.0, iters=1)
    with pytest.raises(ConfigError, match=r"must lie in \(0, t_1 = 0.25\) .* got 0.25$"):
        distiller(run, tmp_path / "x", t_min=0.25, iters=1)
    with pytest.raises(ConfigError, match="label_dropout > 0 needs a conditional teacher"):
        distiller(run, tmp_path / "x", label_dropout=0.1, iters=1)
    with pytest.raises(ConfigError, match="invalid denoiser configuration: .*arch 'conv' needs "
                       "images"):
        distiller(run, tmp_path / "x", denoiser=dict(arch="conv"), iters=1)
    with pytest.raises(ConfigError, match=r"unknown distillation options: \['itres'\]"):
        distiller(run, tmp_path / "x", itres=1)
    with pytest.raises(ConfigError, match="give a budget"):
        distiller(run, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="holds checkpoints of an NTM training run"):
        distiller(run, run, resume=True, iters=1)         # --out = the teacher's own folder


# ----------------------------------------------------------------------------- command line

def test_cli_distill_then_sample_and_eval_with_the_denoiser(tmp_path, capsys):
    run = digits_teacher(tmp_path / "teacher")
    assert run_cli("distill", run, "--iters", 4, "--batch-size", 16, "--updates-per-batch", 2,
                   "--threads", 1, "--no-progress") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = run / "denoiser"                               # the default --out
    assert summary["step"] == 4 and (out / "config.json").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "ntm-denoiser" and cfg["t_min"] == 0.05   # the teacher's t_min_max
    assert cfg["teacher"]["step"] == 7 and cfg["label_dropout"] == 0.1
    assert ckpt.load_latest(out).step == 4 and ckpt.load_latest(run).step == 7

    png = tmp_path / "s.png"
    assert run_cli("sample", run, "-n", 6, "--labels", "3,5", "--denoiser", out, "--out", png,
                   "--save-pt", "--guidance", 1.0) == 0
    text = capsys.readouterr().out
    assert "t_0 = 0.05 with the denoiser" in text and "ms per sample" in text
    saved = torch.load(tmp_path / "s.pt")
    assert saved["samples"].shape == (6, 1, 8, 8) and torch.isfinite(saved["samples"]).all()

    ev = tmp_path / "e.json"
    assert run_cli("eval", run, "--n-samples", 30, "--denoiser", out, "--out", ev) == 0
    res = json.loads(ev.read_text())
    assert res["denoiser"]["t_d"] == 0.05 and res["denoiser"]["step"] == 4
    for key in ("transporter_at_t_d", "denoised"):
        for k in ("class_accuracy", "frechet_distance", "sample_ms_per_sample"):
            assert math.isfinite(res[key][k]), (key, k)
    assert math.isfinite(res["class_accuracy"]) and math.isfinite(res["sample_ms_per_sample"])
    assert "denoised" in capsys.readouterr().out

    assert run_cli("distill", run, "--iters", 6, "--resume", "--no-progress") == 0
    assert ckpt.load_latest(out).step == 6
    assert "resumed from" in capsys.readouterr().err


@pytest.mark.parametrize("argv,code,match", [
    (["--t-min", "0"], None, r"--t-min .* must lie in \(0, t_1 = 0.25\) .* nothing to distil"),
    (["--t-min", "0.3"], None, r"must lie in \(0, t_1 = 0.25\) for the teacher's 4 steps, got 0.3"),
    (["--t-min", "-1"], 2, "--t-min: must be a finite number >= 0"),
    (["--iters", "0"], 2, "--iters: must be >= 1"),
])
def test_cli_distill_argument_errors(tmp_path, capsys, argv, code, match):
    run = gaussian_teacher(tmp_path / "teacher")
    with pytest.raises(SystemExit) as e:
        run_cli("distill", run, *argv, "--out", tmp_path / "never")
    if code is None:
        assert e.value.code.startswith("ntm distill: error: ")
        import re
        assert re.search(match, e.value.code), e.value.code
    else:
        assert e.value.code == code and match in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_cli_refuses_mismatched_teachers_and_denoisers(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"ntm distill: error: teacher RUN .*missing: no such run "
                       "folder"):
        run_cli("distill", tmp_path / "missing")
    run = digits_teacher(tmp_path / "teacher")
    out = tmp_path / "den"
    assert run_cli("distill", run, "--iters", 2, "--batch-size", 8, "--out", out,
                   "--no-progress") == 0
    with pytest.raises(SystemExit, match="already holds checkpoints"):
        run_cli("distill", run, "--iters", 2, "--out", out)
    with pytest.raises(SystemExit, match=r"another configuration:\n  t_min: checkpoint 0.05 vs "
                       r"requested 0.1"):
        run_cli("distill", run, "--iters", 3, "--out", out, "--resume", "--t-min", "0.1")
    with pytest.raises(SystemExit, match=r"--denoiser .*teacher.*is not a denoiser checkpoint"):
        run_cli("sample", run, "-n", 2, "--denoiser", run, "--out", tmp_path / "x.png")
    with pytest.raises(SystemExit, match="ntm distill: error: .*den.* is a denoiser .*not a "
                       "model run; give its teacher run and pass it as --denoiser"):
        run_cli("distill", out, "--iters", 2, "--out", tmp_path / "den2")
    with pytest.raises(SystemExit, match="ntm sample: error: .* is a denoiser"):
        run_cli("sample", out, "-n", 2)
    with pytest.raises(ConfigError, match="teacher .* is not an NTM run checkpoint"):
        make_distill_config(ckpt.resolve(out), iters=1)
    with pytest.raises(SystemExit):   # argparse error: --denoiser needs samples to judge
        run_cli("eval", run, "--n-samples", 0, "--denoiser", out)
    uncond = digits_teacher(tmp_path / "uncond", conditional=False)
    with pytest.raises(SystemExit, match="label mismatch: the denoiser has num_classes=10, the "
                       "model .* num_classes=0"):
        run_cli("eval", uncond, "--n-samples", 4, "--denoiser", out)
    toy = gaussian_teacher(tmp_path / "toy")
    with pytest.raises(SystemExit, match=r"is for data of shape \[1, 8, 8\], the model .* for "
                       r"\[2\]"):
        run_cli("sample", toy, "-n", 2, "--denoiser", out, "--out", tmp_path / "y.png")
    capsys.readouterr()
