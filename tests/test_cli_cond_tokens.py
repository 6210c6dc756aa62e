"""Condition tokens from the command line: ``ntm train --cond [FILE]``, ``ntm sample --cond``,
``ntm eval`` / ``ntm score`` / ``ntm distill`` of a token run, and the errors.  Tiny runs."""
import json
import re

import numpy as np
import pytest
import torch

from ntm_engine import load_run
from ntm_engine.data import digits_data
from ntm_engine.training import ConfigError, DataConfig, make_config, sample_conditions

from test_cli import fast_classifier, run_cli  # noqa: F401  (an autouse fixture)
from tests.run_testutils import TINY_ARGS as TINY

FAST = [*TINY, "--iters", 2, "--warmup", 0, "--eval-every", 1000, "--ckpt-every", 2, "--eval-samples", 10,
        "--no-plots", "--threads", 1]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """40 8x8 images with labels and condition tokens [3, 4] (some padded)."""
    path = tmp_path_factory.mktemp("cond") / "captions.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
             labels=np.arange(40) % 4, cond=rng.standard_normal((40, 3, 4)).astype(np.float32),
             cond_mask=np.arange(3)[None, :] <= (np.arange(40) % 3)[:, None])
    return path


@pytest.fixture(scope="module")
def token_run(npz, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tok"
    assert run_cli("train", "--dataset", npz, "--cond", "--out", run, *FAST) == 0
    return run


@pytest.fixture(scope="module")
def digits_tokens(tmp_path_factory):
    """A token file for the digits: each class's own sequence [2, 3] (the value of the class)."""
    data = digits_data()
    table = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None], (10, 2, 3))
    path = tmp_path_factory.mktemp("digits") / "tokens.npz"
    np.savez(path, cond=table[data.train.labels.numpy()], test_cond=table[data.test.labels.numpy()])
    return path


def test_a_run_on_an_npz_with_tokens_samples_for_given_tokens(token_run, tmp_path, capsys):
    r = load_run(token_run)
    assert r.model.cond_dim == 4 and r.config.data.cond == r.config.dataset
    one = tmp_path / "one.npy"
    np.save(one, np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32))
    assert run_cli("sample", token_run, "--cond", one, "-n", 5, "--guidance", 1.5,
                   "--out", tmp_path / "a.png", "--save-pt") == 0
    assert torch.load(tmp_path / "a.pt")["samples"].shape == (5, 1, 8, 8)
    many, mask = tmp_path / "many.npy", tmp_path / "mask.npy"
    np.save(many, np.random.default_rng(2).standard_normal((7, 3, 4)))        # float64 is fine
    np.save(mask, np.array([True, True, False]))
    assert run_cli("sample", token_run, "--cond", many, "--cond-mask", mask,
                   "--out", tmp_path / "b.png", "--save-npy") == 0
    assert np.load(tmp_path / "b.npy").shape == (7, 1, 8, 8)          # -n from the file
    assert "7 samples" in capsys.readouterr().out


def test_sample_refuses_bad_tokens(token_run, tmp_path):
    bad_c, one = tmp_path / "c5.npy", tmp_path / "one.npy"
    np.save(bad_c, np.zeros((3, 5), np.float32))
    np.save(one, np.zeros((3, 4), np.float32))
    cases = [
        (["--cond", bad_c], r"--cond .*c5.npy: expected float tokens \[L, 4\] or \[N, L, 4\] "
                            r"\(the run's cond_dim = 4\), got float32 \[3, 5\]"),
        (["--cond-mask", one], "--cond-mask needs --cond"),
        (["--cond", one, "--cond-mask", one], "--cond-mask .*: expected bools"),
        (["--cond", tmp_path / "missing.npy"], "--cond .*missing.npy: not a readable .npy"),
    ]
    for argv, match in cases:
        with pytest.raises(SystemExit, match=match):
            run_cli("sample", token_run, *argv, "--out", tmp_path / "x.png")


def test_sample_refuses_tokens_for_a_run_without_them(npz, tmp_path):
    run = tmp_path / "plain"
    assert run_cli("train", "--dataset", npz, "--out", run, *FAST) == 0
    one = tmp_path / "one.npy"
    np.save(one, np.zeros((3, 4), np.float32))
    with pytest.raises(SystemExit, match=r"--cond: this run has no condition tokens "
                       r"\(cond_dim=0"):
        run_cli("sample", run, "--cond", one, "--out", tmp_path / "x.png")
    with pytest.raises(SystemExit, match="--guidance needs a conditional model"):
        run_cli("sample", run, "--guidance", 1, "--out", tmp_path / "x.png")


def test_eval_and_score_of_a_token_run(token_run, tmp_path):
    # (raw weights: after two steps the EMA is still nearly the new model, which ignores the
    # condition: its heads start at zero)
    assert run_cli("eval", token_run, "--n-samples", 8, "--bpd-samples", 1, "--guidance", 1,
                   "--no-ema", "--out", tmp_path / "e.json") == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["condition_tokens"] == str(load_run(token_run).config.dataset)
    assert np.isfinite(res["test_bpd_cond"]) and np.isfinite(res["test_bpd_uncond"])
    assert res["test_bpd_cond"] != res["test_bpd_uncond"]
    assert run_cli("score", token_run, "--cond", "--bpd-samples", 1, "--no-ema", "--out",
                   tmp_path / "c.csv") == 0
    assert run_cli("score", token_run, "--bpd-samples", 1, "--no-ema", "--out",
                   tmp_path / "u.csv") == 0
    cond = np.loadtxt(tmp_path / "c.csv", delimiter=",", skiprows=1, usecols=2)
    uncond = np.loadtxt(tmp_path / "u.csv", delimiter=",", skiprows=1, usecols=2)
    assert cond.shape == uncond.shape == (4,) and not np.allclose(cond, uncond)


def test_digits_with_a_token_file_are_sampled_with_each_class_tokens(digits_tokens, tmp_path):
    data = DataConfig("digits", cond=str(digits_tokens))
    y, classes = sample_conditions(data, 25)
    assert torch.equal(classes, torch.arange(25) % 10) and y.labels is None
    assert torch.equal(y.tokens[:, 0, 0], classes.float())       # the class's own sequence
    run = tmp_path / "dt"
    assert run_cli("train", "--dataset", "digits", "--cond", digits_tokens, "--out", run,
                   *FAST) == 0
    assert run_cli("eval", run, "--n-samples", 20, "--bpd-samples", 1, "--out",
                   tmp_path / "e.json") == 0
    assert 0 <= json.loads((tmp_path / "e.json").read_text())["class_accuracy"] <= 1
    # a teacher with tokens distils (the denoiser reads no tokens; its targets do)
    assert run_cli("distill", run, "--iters", 1, "--batch-size", 8, "--no-progress",
                   "--out", run / "den") == 0
    assert run_cli("sample", run, "--denoiser", run / "den", "-n", 2, "--out",
                   tmp_path / "d.png") == 0


def test_train_refuses_bad_token_options(npz, tmp_path, digits_tokens, capsys):
    plain = tmp_path / "plain.npz"
    np.savez(plain, images=np.zeros((10, 8, 8), np.uint8))
    cases = [
        (["--dataset", "digits", "--cond"], "--cond without a FILE takes the tokens from the "
         ".npz --dataset's 'cond' key; --dataset digits is not an .npz file"),
        (["--dataset", plain, "--cond"], "--cond: dataset .* carries no condition tokens"),
        (["--dataset", "digits", "--cond", npz], r"--cond .*captions.npz: .*expected one token "
         r"sequence per image \(1438\), got 40"),
        (["--dataset", "two_moons", "--cond", npz], "--cond needs image data"),
        (["--dataset", "digits", "--cond", digits_tokens, "--objective", "flow_matching"],
         "condition tokens are not supported with flow-matching pretraining"),
    ]
    for argv, match in cases:
        with pytest.raises(SystemExit) as e:
            run_cli("train", *argv, "--out", tmp_path / "r", *FAST)
        assert re.search(match, f"{e.value.code} {capsys.readouterr().err}"), match


def test_the_config_ties_cond_dim_to_cond(npz):
    cfg = make_config(str(npz), cond=str(npz), iters=1)
    assert cfg.model["cond_dim"] == 4 and cfg.to_dict()["cond"] == str(npz)
    with pytest.raises(ConfigError, match=r"model cond_dim 4 but --cond None"):
        make_config(str(npz), model={"cond_dim": 4}, iters=1)
    with pytest.raises(ConfigError, match=r"model cond_dim 0 but --cond"):
        make_config(str(npz), cond=str(npz), model={"cond_dim": 0}, iters=1)


def test_resume_refuses_other_tokens(token_run, digits_tokens):
    with pytest.raises(SystemExit, match="cond: checkpoint"):
        run_cli("train", "--out", token_run, "--resume", "--cond", digits_tokens, *FAST)
