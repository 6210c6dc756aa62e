"""Run folders written before the ``training/`` + ``cli/`` refactor (``tests/fixtures/
run_v1_digits``, config version 1) still load, compute what the old code computed, sample,
evaluate to the recorded figure, and ``--resume``.  Copies only: the fixture stays as written."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from ntm_engine import checkpoint as ckpt
from ntm_engine import load_run
from ntm_engine.training import (CONFIG_VERSION, TrainConfig, load_denoiser, make_config,
                                 read_metrics)

from test_cli import fast_classifier, run_cli  # noqa: F401  (an autouse fixture)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_v1_digits"


@pytest.fixture
def old_run(tmp_path):
    out = tmp_path / "run"
    shutil.copytree(FIXTURE, out)
    return out


def test_the_fixture_is_an_old_version_run():
    cfg = json.loads((FIXTURE / "config.json").read_text())
    assert "version" not in cfg and CONFIG_VERSION > 1
    assert "transporter" not in cfg["model"]


@pytest.mark.parametrize("version", [1, 2])
def test_older_configs_name_the_label_conditioned_coupling_transporter(version):
    old = json.loads((FIXTURE / "config.json").read_text())
    if version > 1:
        old["version"] = version
    m = TrainConfig.from_dict(old).model
    assert (m["transporter"], m["transporter_label_conditioned"]) == ("coupling", True)
    # a version-2 config that already names its transporter keeps it
    named = {**old, "version": 2, "model": {**old["model"], "transporter": "none",
                                            "transporter_label_conditioned": False}}
    m = TrainConfig.from_dict(named).model
    assert (m["transporter"], m["transporter_label_conditioned"]) == ("none", False)


def test_new_runs_default_to_a_label_free_transporter():
    m = make_config("digits", True, iters=1).model
    assert m["transporter_label_conditioned"] is False
    assert make_config("digits", True, iters=1).to_dict()["version"] == CONFIG_VERSION


def test_load_run_computes_what_the_old_code_computed(old_run):
    expected = torch.load(old_run / "expected_v1.pt")
    r = load_run(old_run)
    assert isinstance(r.config, TrainConfig) and r.step == 6 and r.run_dir == old_run
    assert r.config.conditional and r.config.model["width"] == 32 and not r.model.training
    s = r.model.sample(4, y=torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s, expected["samples_seed0_labels0123"])
    with torch.no_grad():
        nll = r.model.trajectory_nll(expected["nll_x"], expected["nll_y"],
                                     generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(nll, expected["nll_seed1"].detach())
    raw = load_run(old_run, ema=False).model.state_dict()
    stored = ckpt.load_latest(old_run).model
    assert all(torch.equal(raw[k], stored[k]) for k in stored)


def test_cli_samples_and_evaluates_an_old_run(old_run, capsys, tmp_path):
    assert run_cli("sample", old_run, "-n", 6, "--labels", "3", "--out", tmp_path / "s.png",
                   "--save-pt") == 0
    assert torch.load(tmp_path / "s.pt")["samples"].shape == (6, 1, 8, 8)
    assert run_cli("sample", old_run, "-n", 4, "--denoiser", old_run / "denoiser",
                   "--out", tmp_path / "d.png") == 0
    assert "with the denoiser" in capsys.readouterr().out
    assert run_cli("eval", old_run, "--n-samples", 0, "--out", tmp_path / "e.json") == 0
    res = json.loads((tmp_path / "e.json").read_text())
    recorded = [r for r in read_metrics(old_run) if r["type"] == "eval"][-1]
    assert res["step"] == recorded["step"] == 6
    assert res["test_bpd"] == pytest.approx(recorded["test_bpd"], rel=1e-6)   # same figure
    den, ck = load_denoiser(old_run / "denoiser")
    assert ck.step == 2 and den.config["hidden"] == 32


def test_an_old_run_resumes(old_run, capsys):
    assert run_cli("train", "--out", old_run, "--resume", "--iters", 9, "--no-plots",
                   "--no-progress") == 0
    assert ckpt.load_latest(old_run).step == 9
    assert "resumed from" in capsys.readouterr().err
    cfg = json.loads((old_run / "config.json").read_text())
    old = json.loads((FIXTURE / "config.json").read_text())
    assert cfg["version"] == CONFIG_VERSION and cfg["iters"] == 9
    # the upgrade names the transporter old runs were trained with; nothing else changes
    assert cfg["model"] == {**old["model"], "transporter": "coupling",
                            "transporter_label_conditioned": True}
    assert {k: v for k, v in cfg.items() if k not in ("version", "iters", "model")} == \
        {**{k: v for k, v in old.items() if k not in ("iters", "model")},
         "trajectory_loss": "end_to_end",
         # keys added later, at the values that reproduce what old runs did
         "image_size": None, "channels": None, "data_workers": 0, "decoder": None,
         "precision": "fp32", "cond": None,
         "checkpoint_predictor": False, "ema_warmup": 10.0,
         # the drift guard is on for old runs too (it changes nothing unless it fires)
         "reversible_check_every": 100, "reversible_tolerance": None,
         "reversible_guard": "fallback"}
    steps = [r["step"] for r in read_metrics(old_run) if r["type"] == "train"]
    assert steps == [3, 6, 9] and math.isfinite(read_metrics(old_run)[-1]["test_bpd"])


MULTI_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_multi_steps_old"


def test_an_old_several_step_run_loads_computes_evaluates_and_resumes(tmp_path, capsys):
    """A run trained on T in (2, 4, 8) by the code before the static step-count groups (which
    split the batch with ``nonzero``): its likelihood of fixed trajectories at each T and its
    recorded test bits/dim are what that code computed, and it resumes (its later training
    draws come from the static groups: docs/design.md section 1, "Several step counts")."""
    run = tmp_path / "multi"
    shutil.copytree(MULTI_FIXTURE, run)
    expected = torch.load(run / "expected_multi_steps.pt")
    r = load_run(run)
    assert r.model.trained_steps == (2, 4, 8) and r.step == 4
    for T in (2, 4, 8):
        X, t = r.model.forward_trajectory(expected["x"], torch.Generator().manual_seed(T),
                                          steps=T)
        assert torch.equal(X, expected[f"X_{T}"]) and torch.equal(t, expected[f"t_{T}"])
        with torch.no_grad():
            torch.testing.assert_close(r.model.trajectory_log_prob(X, t),
                                       expected[f"log_prob_{T}"])
    assert run_cli("eval", run, "--n-samples", 0, "--bpd-samples", 1,
                   "--out", tmp_path / "e.json") == 0
    recorded = [m for m in read_metrics(run) if m["type"] == "eval"][-1]
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["test_bpd"] == pytest.approx(recorded["test_bpd"], rel=1e-6)
    assert run_cli("train", "--out", run, "--resume", "--iters", 6, "--no-plots",
                   "--no-progress") == 0
    assert ckpt.load_latest(run).step == 6 and "resumed from" in capsys.readouterr().err
    train = [m for m in read_metrics(run) if m["type"] == "train"]
    assert [m["step"] for m in train] == [2, 4, 6] and all(math.isfinite(m["loss"])
                                                             for m in train)
