"""The model options of ``ntm train`` reach the run: the transporter kind (with its default
sizes), several step counts, the time shift and the pair-wise trajectory loss; what needs one
``T`` (distillation, FM initialisation, the default sample steps) handles several."""
import json

import pytest
import torch

from ntm_engine.models import NTM, schedule
from ntm_engine.models.flow_matching import frozen_copy
from ntm_engine.models.loss import anchored_trajectory_nll
from ntm_engine.models.transporter import AutoregressiveTransporter, IdentityTransporter
from ntm_engine.training import (ConfigError, build_model, default_sample_steps, load_run,
                                 make_config)
from ntm_engine.training.distill_config import teacher_first_time
from ntm_engine.training.factory import make_objective
from ntm_engine.training.objectives import Batch

from test_cli import run_cli

TINY = ["--width", "16", "--depth", "1", "--heads", "2", "--batch-size", "16", "--iters", "2",
        "--eval-every", "2", "--ckpt-every", "2", "--eval-samples", "0", "--no-progress",
        "--no-plots"]


def test_train_flags_reach_the_model(tmp_path, capsys):
    run = tmp_path / "ar"
    assert run_cli("train", "--class-conditional", "--transporter", "autoregressive",
                   "--steps", "4,2", "--shift", "auto", "--trajectory-loss", "pairwise", *TINY,
                   "--out", run) == 0
    cfg = json.loads((run / "config.json").read_text())
    m = cfg["model"]
    assert (m["transporter"], m["steps"], m["shift"]) == ("autoregressive", [2, 4], "auto")
    assert (m["transporter_layers"], m["transporter_hidden"]) == (2, 64)   # AR defaults
    assert cfg["trajectory_loss"] == "pairwise" and not m["transporter_label_conditioned"]
    model = load_run(run).model
    assert isinstance(model.transporter, AutoregressiveTransporter)
    assert model.trained_steps == (2, 4) and model.shift == schedule.auto_shift(4)
    with pytest.raises(SystemExit, match="trajectory_loss: checkpoint 'pairwise'"):
        run_cli("train", "--out", run, "--resume", "--trajectory-loss", "end_to_end")


def test_steps_T_alias_identity_transporter_and_bad_values(tmp_path, capsys):
    run = tmp_path / "none"
    assert run_cli("train", "--dataset", "two_moons", "--steps-T", "3", "--transporter", "none",
                   "--shift", "0.5", *TINY, "--out", run) == 0
    m = json.loads((run / "config.json").read_text())["model"]
    assert (m["steps"], m["shift"], m["transporter"]) == (3, 0.5, "none")
    assert isinstance(load_run(run).model.transporter, IdentityTransporter)
    for argv, msg in ((["--steps", "4,4"], "distinct step counts"),
                      (["--steps", "0"], "distinct step counts"),
                      (["--shift", "big"], "--shift"),
                      (["--transporter", "mlp"], "--transporter"),
                      (["--trajectory-loss", "both"], "--trajectory-loss")):
        with pytest.raises(SystemExit) as e:
            run_cli("train", *argv, *TINY, "--out", tmp_path / "bad")
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_a_batch_too_small_for_the_step_counts_is_refused_before_any_work(tmp_path):
    """Each trained step count needs a group of at least one sample per process."""
    with pytest.raises(SystemExit, match=r"--batch-size 2: steps: a batch of 2 sample\(s\) "
                       r"cannot give each of the 3 trained step counts \(2, 4, 8\).*--steps"):
        run_cli("train", "--steps", "2,4,8", *TINY, "--batch-size", "2", "--out",
                tmp_path / "small")
    assert not (tmp_path / "small").exists()
    assert run_cli("train", "--steps", "2,4,8", *TINY, "--batch-size", "3",
                   "--out", tmp_path / "three") == 0


def test_step_shares_reach_the_model_and_bad_ones_name_the_flag(tmp_path, capsys):
    run = tmp_path / "shares"
    assert run_cli("train", "--steps", "2,4,8", "--step-shares", "2,1,1", *TINY,
                   "--out", run) == 0
    assert json.loads((run / "config.json").read_text())["model"]["step_shares"] == [2, 1, 1]
    assert load_run(run).model.step_shares == (0.5, 0.25, 0.25)
    for argv, msg in ((["--step-shares", "2,x"], "expected positive numbers separated by "
                       "commas, one per step count (e.g. 2,1,1), got '2,x'"),
                      (["--step-shares", "2,-1"], "expected positive numbers")):
        with pytest.raises(SystemExit) as e:
            run_cli("train", *argv, *TINY, "--out", tmp_path / "bad")
        assert e.value.code == 2 and msg in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"--step-shares \(how often each of --steps is drawn\): "
                       r"step_shares must hold 3 positive finite numbers, one per trained step "
                       r"count \(2, 4, 8\) in increasing T, got \[2.0, 1.0\]"):
        run_cli("train", "--steps", "2,4,8", "--step-shares", "2,1", *TINY,
                "--out", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_larger_images_draw_their_smallest_step_count_most_often():
    """Above 256 values per image the config trains T = 4, 8 in the shares 8, 1; the digits
    keep 2, 4, 8 in equal shares; given --steps drop the config's shares (they belong to its
    counts), given --step-shares win."""
    colour = make_config("colour-patches", iters=1).model
    assert colour["steps"] == [4, 8] and colour["step_shares"] == [8.0, 1.0]
    digits = make_config("digits", iters=1).model
    assert digits["steps"] == [2, 4, 8] and digits["step_shares"] is None
    small = make_config("colour-patches", image_size=8, channels=1, iters=1).model
    assert small["step_shares"] is None and small["steps"] == [2, 4, 8]
    own = make_config("colour-patches", model=dict(steps=[4, 8, 16]), iters=1).model
    assert own["steps"] == [4, 8, 16] and own["step_shares"] is None
    mine = make_config("colour-patches", model=dict(step_shares=[1, 2]), iters=1).model
    assert mine["step_shares"] == [1, 2]
    model = build_model(make_config("colour-patches", iters=1))
    assert model.trained_steps == (4, 8) and model.step_shares == (8 / 9, 1 / 9)
    assert NTM.image_step_counts((3, 16, 16)) == [4, 8]
    assert NTM.image_step_shares((3, 16, 16)) == [8.0, 1.0]
    assert NTM.image_step_shares((4, 8, 8)) is None


def test_explicit_sizes_win_over_the_autoregressive_defaults():
    m = make_config("digits", model=dict(transporter="autoregressive", transporter_layers=3),
                    iters=1).model
    assert (m["transporter_layers"], m["transporter_hidden"]) == (3, 64)
    assert make_config("digits", iters=1).model["transporter_layers"] == 4   # coupling: as was
    with pytest.raises(ConfigError, match="--trajectory-loss must be one of"):
        make_config("digits", iters=1, trajectory_loss="sideways")


def test_larger_images_get_the_larger_coupling_transporter():
    """Up to 256 values per image the digits' 4 x 128 couplings, above them 8 x 512 (chosen
    at equal wall-clock on the colour patches); the autoregressive kind keeps its own sizes
    and explicit sizes win over both."""
    size = ("transporter_layers", "transporter_hidden")
    m = make_config("colour-patches", iters=1).model
    assert tuple(m[k] for k in size) == (8, 512) and m["data_shape"] == [3, 16, 16]
    small = make_config("colour-patches", image_size=8, channels=1, iters=1).model
    assert tuple(small[k] for k in size) == (4, 128) and small["data_shape"] == [1, 8, 8]
    assert tuple(make_config("digits", iters=1).model[k] for k in size) == (4, 128)
    ar = make_config("colour-patches", model=dict(transporter="autoregressive"), iters=1).model
    assert tuple(ar[k] for k in size) == (2, 64)
    given = make_config("colour-patches", model=dict(transporter_hidden=96), iters=1).model
    assert tuple(given[k] for k in size) == (8, 96)
    assert NTM.image_transporter_size((3, 16, 16)) == dict(transporter_layers=8,
                                                           transporter_hidden=512)
    assert NTM.image_transporter_size((4, 8, 8)) == dict(transporter_layers=4,
                                                         transporter_hidden=128)


def test_the_objective_uses_the_configured_trajectory_loss():
    cfg = make_config("two_moons", model=dict(width=16, depth=1, heads=2, steps=4), iters=1,
                      trajectory_loss="pairwise")
    model = build_model(cfg).double()
    x = torch.randn(6, 2, dtype=torch.float64)

    def loss(kind):
        g = torch.Generator().manual_seed(3)
        if kind is None:
            return make_objective(cfg, model).loss(Batch(x, None, g))[0]
        return model.trajectory_nll(x, generator=g, trajectory_loss=kind)
    torch.testing.assert_close(loss(None), loss("pairwise"))
    assert (loss(None) - loss("end_to_end")).abs().max() > 1e-3


def test_fm_anchor_of_a_several_step_model_sees_each_trajectorys_step_count():
    torch.manual_seed(0)
    ntm = NTM((1, 4, 4), steps=(2, 4), width=16, depth=1, heads=2, patch_size=2,
              transporter_layers=1, transporter_hidden=8,
              parameterization="flow_matching").double()
    with torch.no_grad():
        for p in ntm.predictor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    nll, sq = anchored_trajectory_nll(ntm, frozen_copy(ntm.predictor), x,
                                      generator=torch.Generator().manual_seed(1))
    assert nll.shape == (8,) and torch.isfinite(nll).all()
    assert sq.abs().max() < 1e-20        # its own copy: the same means, step count included


def test_single_T_needs_take_the_smallest_trained_T():
    cfg = make_config("digits", True, model=dict(steps=[8, 4], shift="auto"), iters=1)
    assert default_sample_steps(cfg) == 4
    model = build_model(cfg)
    t1 = float(model.time_grid(1, steps=4, dtype=torch.float64)[0, 1])
    assert teacher_first_time(cfg.model) == pytest.approx(t1, rel=1e-12)


def test_dropout_reaches_the_predictor_and_a_bad_one_names_the_flag(tmp_path):
    run = tmp_path / "drop"
    assert run_cli("train", "--dropout", "0.2", *TINY, "--out", run) == 0
    assert json.loads((run / "config.json").read_text())["model"]["dropout"] == 0.2
    drops = [m for m in load_run(run).model.predictor.modules()
             if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.2 for m in drops)
    with pytest.raises(SystemExit, match=r"--dropout must be a number in \[0, 1\), got 1.0"):
        run_cli("train", "--dropout", "1", *TINY, "--out", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_the_digits_default_to_a_stronger_weight_decay_and_the_flag_wins(tmp_path):
    for argv, want in ((["--dataset", "digits"], 0.3),
                       (["--dataset", "digits", "--weight-decay", "0.05"], 0.05),
                       (["--dataset", "two_moons"], 0.01)):
        run = tmp_path / f"wd{len(list(tmp_path.iterdir()))}"
        assert run_cli("train", *argv, *TINY, "--out", run) == 0
        assert json.loads((run / "config.json").read_text())["weight_decay"] == want
    # a resumed run keeps its own, whatever the dataset's default
    assert run_cli("train", "--out", tmp_path / "wd1", "--resume", "--iters", "3",
                   "--no-progress", "--no-plots", "--eval-samples", "0") == 0
    assert json.loads((tmp_path / "wd1" / "config.json").read_text())["weight_decay"] == 0.05


def test_ema_warmup_reaches_the_run_and_a_bad_one_names_the_flag(tmp_path):
    run = tmp_path / "ema"
    assert run_cli("train", "--ema-warmup", "4", *TINY, "--out", run) == 0
    assert json.loads((run / "config.json").read_text())["ema_warmup"] == 4.0
    with pytest.raises(SystemExit, match=r"--ema-warmup must be a finite number > 1, got 1.0"):
        run_cli("train", "--ema-warmup", "1", *TINY, "--out", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
