"""Training integration of flow-matching pretraining and of the NTM started from it: the
regulariser's schedule and bookkeeping, the initial weights, bitwise resume (also with the FM
run gone), configuration errors before any work, stored configs of older code, and the
command line.  Tiny models on CPU, about a second per run."""
import json
import math
import shutil

import pytest
import torch

from ntm_engine import checkpoint as ckpt
from ntm_engine.training import (REFERENCE_FILE, ConfigError, build_model,
                                 config_differences, fm_reg_weight, read_metrics,
                                 validate_config)

from run_testutils import trainer
from run_testutils import tiny_cfg as run_tiny_cfg
from test_cli import TINY as CLI_TINY
from test_cli import fast_classifier, run_cli  # noqa: F401  (fixture: a quick classifier)

def tiny_cfg(dataset="two_moons", conditional=False, model=None, **train):
    return run_tiny_cfg(dataset, conditional, model, **{**dict(iters=12, warmup=3, ckpt_every=6),
                                                       **train})


def train_records(run):
    return {r["step"]: r for r in read_metrics(run) if r.get("type") == "train"}


@pytest.fixture(scope="module")
def fm_run(tmp_path_factory):
    """A finished flow-matching run on two moons (12 steps)."""
    out = tmp_path_factory.mktemp("fm") / "run"
    trainer(tiny_cfg(objective="flow_matching", eval_every=12), out).run()
    return out


# ----------------------------------------------------------------------------- schedule

def test_fm_reg_weight_is_a_cosine_from_lambda_to_zero():
    cfg = tiny_cfg(iters=100, fm_reg=2.5)
    w = [fm_reg_weight(cfg, s) for s in range(101)]
    assert w[0] == 2.5 and w[100] == 0.0
    assert w[50] == pytest.approx(1.25, abs=1e-12)
    assert w[25] == pytest.approx(2.5 * 0.5 * (1 + math.cos(math.pi / 4)), abs=1e-12)
    assert all(a > b for a, b in zip(w, w[1:]))
    timed = cfg.replace(iters=None, minutes=1.0)
    assert fm_reg_weight(timed, 10**6, elapsed_s=30.0) == pytest.approx(1.25)
    assert fm_reg_weight(cfg.replace(fm_reg=0.0), 3) == 0.0


# ----------------------------------------------------------------------------- runs

def test_flow_matching_run_records_its_loss(fm_run):
    recs = read_metrics(fm_run)
    train = [r for r in recs if r["type"] == "train"]
    assert len(train) == 12 and all(r["fm_loss"] == r["loss"] for r in train)
    assert not any("train_bpd" in r for r in train)          # no likelihood
    ev = [r for r in recs if r["type"] == "eval"]
    assert len(ev) == 1 and math.isfinite(ev[0]["test_fm_loss"]) and ev[0]["test_n"] == 5000
    cfg = json.loads((fm_run / "config.json").read_text())
    assert cfg["objective"] == "flow_matching"
    assert cfg["model"]["parameterization"] == "flow_matching"


def test_init_from_starts_at_the_fm_model_and_logs_both_terms(fm_run, tmp_path):
    cfg = tiny_cfg(init_from=str(fm_run), iters=8)
    assert cfg.model["parameterization"] == "flow_matching"
    t = trainer(cfg, tmp_path / "ntm")
    fm_ema = ckpt.load_latest(fm_run).ema
    for k, v in t.model.predictor.state_dict().items():
        assert torch.equal(v, fm_ema["predictor." + k]), k
        assert torch.equal(t.ema.model.predictor.state_dict()[k], v), k
        assert torch.equal(t.reference.state_dict()[k], v), k
    x = torch.randn(4, 2)
    X, tt = t.model.forward_trajectory(x, generator=torch.Generator().manual_seed(0))
    U, logdet, _, _ = t.model.predict_levels(X, tt)
    assert torch.equal(U, X[:, :-1]) and (logdet == 0).all()   # identity transporter
    assert (tmp_path / "ntm" / REFERENCE_FILE).is_file()
    t.run()
    recs = train_records(tmp_path / "ntm")
    assert sorted(recs) == list(range(1, 9))
    assert recs[1]["fm_reg"] == 0.0                  # step 1 is taken at the FM model itself
    assert recs[8]["fm_reg"] > 0
    assert [recs[s]["fm_reg_weight"] for s in recs] == [fm_reg_weight(cfg, s - 1) for s in recs]
    for r in recs.values():    # loss = nll + w * reg (means of one step: float32 rounding)
        assert r["loss"] == pytest.approx(r["nll"] + r["fm_reg_weight"] * r["fm_reg"],
                                          rel=1e-6, abs=1e-5)
        assert math.isfinite(r["train_bpd"])
    for k, v in t.reference.state_dict().items():    # the reference stays frozen
        assert torch.equal(v, fm_ema["predictor." + k]), k


@pytest.mark.parametrize("objective", ["flow_matching", "ntm_from_fm"])
def test_resume_reproduces_uninterrupted_run_bitwise(fm_run, tmp_path, objective):
    if objective == "flow_matching":
        cfg = tiny_cfg(objective="flow_matching", iters=16, ckpt_every=8)
    else:   # the FM run is copied, and deleted before the resume: the run folder suffices
        shutil.copytree(fm_run, tmp_path / "fm")
        cfg = tiny_cfg(init_from=str(tmp_path / "fm"), iters=16, ckpt_every=8)
    full = trainer(cfg, tmp_path / "full")
    full.run()
    part = trainer(cfg, tmp_path / "part")
    part.run(stop_after=8)
    if objective != "flow_matching":
        shutil.rmtree(tmp_path / "fm")
    resumed = trainer(cfg, tmp_path / "part", resume=True)
    assert resumed.step == 8
    resumed.run()
    a, b = train_records(tmp_path / "full"), train_records(tmp_path / "part")
    assert sorted(b) == list(range(1, 17))
    keys = ("loss", "fm_loss") if objective == "flow_matching" else ("loss", "nll", "fm_reg")
    for s in range(9, 17):
        for k in keys:
            assert a[s][k] == b[s][k], (s, k)
    for (k, x), y in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(x, y), k
    for x, y in zip(full.ema.model.state_dict().values(), resumed.ema.model.state_dict().values()):
        assert torch.equal(x, y)


def test_resume_needs_the_stored_reference(fm_run, tmp_path):
    cfg = tiny_cfg(init_from=str(fm_run), iters=6, ckpt_every=3)
    trainer(cfg, tmp_path).run(stop_after=3)
    (tmp_path / REFERENCE_FILE).unlink()
    with pytest.raises(ConfigError, match="fm_reference.safetensors.*missing"):
        trainer(cfg, tmp_path, resume=True)


# ----------------------------------------------------------------------------- errors

@pytest.fixture(scope="module")
def fm_digits_run(tmp_path_factory):
    """A class-conditional digits FM run (2 steps: only its config and weights matter)."""
    out = tmp_path_factory.mktemp("fm_digits") / "run"
    trainer(tiny_cfg("digits", True, objective="flow_matching", iters=2, ckpt_every=2), out).run()
    return out


@pytest.mark.parametrize("dataset,conditional,model,match", [
    ("digits", True, dict(width=64), "model.width differs: the flow-matching run has 32, "
                                     "this run 64"),
    ("digits", True, dict(depth=2), "model.depth differs"),
    ("digits", True, dict(heads=4), "model.heads differs"),
    ("digits", True, dict(patch_size=2), "model.patch_size differs"),
    ("digits", False, {}, "class_conditional differs: the flow-matching run has True"),
    ("checkerboard", False, {}, "dataset differs"),
])
def test_init_from_mismatch_is_a_clear_error_before_any_work(fm_digits_run, tmp_path, dataset,
                                                             conditional, model, match):
    cfg = tiny_cfg(dataset, conditional, model=model, init_from=str(fm_digits_run))
    with pytest.raises(ConfigError, match=match):
        trainer(cfg, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_init_from_needs_a_flow_matching_run(fm_run, tmp_path):
    ntm_run = tmp_path / "ntm"
    trainer(tiny_cfg(iters=2, ckpt_every=2), ntm_run).run()
    with pytest.raises(ConfigError, match="is an 'ntm' run; it must be a flow-matching run"):
        trainer(tiny_cfg(init_from=str(ntm_run)), tmp_path / "a")
    with pytest.raises(ConfigError, match="no such checkpoint"):
        trainer(tiny_cfg(init_from=str(tmp_path / "missing")), tmp_path / "b")
    with pytest.raises(ConfigError, match="needs --objective ntm"):
        tiny_cfg(objective="flow_matching", init_from=str(fm_run))
    for kw in (dict(init_from=str(fm_run)), dict(objective="flow_matching")):
        with pytest.raises(ConfigError, match="need the flow_matching parameterization"):
            tiny_cfg(model=dict(parameterization="gaussian"), **kw)
    with pytest.raises(ConfigError, match="--fm-reg must be"):
        tiny_cfg(init_from=str(fm_run), fm_reg=-1.0)
    with pytest.raises(ConfigError, match="--objective must be one of"):
        tiny_cfg(objective="diffusion")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_configs_stored_by_older_code_stay_valid():
    new = tiny_cfg("digits", True)
    old = new.to_dict()
    del old["version"]   # (configs of older code have none)
    for k in ("objective", "init_from", "fm_reg"):
        del old[k]
    del old["model"]["parameterization"]
    assert config_differences(old, new) == [] and config_differences(new, old) == []
    validate_config(old)
    model = build_model(old)
    assert model.predictor.parameterization == "gaussian"
    assert new.model["parameterization"] == "gaussian" and new.objective.objective == "ntm"


# ----------------------------------------------------------------------------- command line

def test_cli_pretrain_then_init_from(tmp_path, capsys):
    fm, ntm = tmp_path / "fm", tmp_path / "ntm"
    assert run_cli("train", "--class-conditional", "--objective", "flow_matching", *CLI_TINY,
                   "--iters", 4, "--eval-every", 4, "--eval-samples", 10, "--out", fm) == 0
    assert (fm / "samples.png").is_file() and (fm / "curves.png").is_file()
    with pytest.raises(SystemExit, match="model.width differs"):
        run_cli("train", "--class-conditional", "--init-from", fm, *CLI_TINY[2:],
                "--width", 64, "--iters", 2, "--out", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert run_cli("train", "--class-conditional", "--init-from", fm, "--fm-reg", 1.5,
                   *CLI_TINY, "--iters", 4, "--log-every", 2, "--no-plots", "--out", ntm) == 0
    cfg = json.loads((ntm / "config.json").read_text())
    assert cfg["init_from"] == str(fm) and cfg["fm_reg"] == 1.5
    assert cfg["model"]["parameterization"] == "flow_matching"
    rec = [r for r in read_metrics(ntm) if r["type"] == "train"][0]
    assert {"nll", "fm_reg", "fm_reg_weight", "train_bpd"} <= set(rec)
    capsys.readouterr()
    assert run_cli("eval", fm, "--n-samples", 20, "--out", tmp_path / "fm.json") == 0
    res = json.loads((tmp_path / "fm.json").read_text())
    assert res["steps"] == 32 and "test_bpd" not in res
    assert math.isfinite(res["test_fm_loss"]) and 0 <= res["class_accuracy"] <= 1
    assert run_cli("eval", ntm, "--n-samples", 20, "--out", tmp_path / "ntm.json") == 0
    assert math.isfinite(json.loads((tmp_path / "ntm.json").read_text())["test_bpd"])
    assert run_cli("sample", fm, "-n", 4, "--steps", 3, "--out", tmp_path / "s.png") == 0
    assert "3 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        run_cli("train", "--help")
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for opt in ("--objective", "--init-from", "--fm-reg", "--parameterization"):
        assert opt in help_text
