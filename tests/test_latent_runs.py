"""Runs on latents (an ``.npz`` with ``latents``): the per-channel statistics stored in the run,
the likelihood in nats/dim of the latents in their own scale (scaling them by 2 shifts it by
exactly log 2), the ``--decoder`` (its errors name it), the grids without one, raw latents
from ``ntm sample``, and the commands' refusals."""
import csv
import json
import math
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from ntm_engine import load_run, plots
from ntm_engine.data import channel_mean_std, open_dataset
from ntm_engine.training import (ConfigError, TrainConfig, build_model, evaluate_bpd,
                                 grid_images, latent_quality, load_decoder, make_config,
                                 run_decoder)
from ntm_engine.training.decoder import decoder_spec
from ntm_engine.training.errors import OptionError

from run_testutils import TINY, tiny_cfg, trainer
from test_cli import run_cli

SMALL = dict(batch_size=16, iters=4, warmup=1, log_every=2, eval_every=4, ckpt_every=4,
             eval_samples=12)


def write_latents(path, n=64, scale=(0.5, 4.0, 1.0, 20.0), seed=0, factor=1.0):
    rng = np.random.default_rng(seed)
    z = np.asarray(scale).reshape(1, -1, 1, 1) * rng.standard_normal((n, len(scale), 4, 4))
    z = z + np.arange(len(scale)).reshape(1, -1, 1, 1)
    np.savez(path, latents=(factor * z).astype(np.float32), labels=np.arange(n) % 3)
    return path


def write_module(folder, name, body):
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return folder / f"{name}.py"


DECODER = """
    import torch
    def decode(z):
        return torch.sigmoid(z[:, :3]).repeat_interleave(2, 2).repeat_interleave(2, 3)
    def wrong_shape(z):
        return z[:, :2]
    def signed(z):
        return torch.tanh(z[:, :3] * 10)
    def numpy_out(z):
        return torch.sigmoid(z[:, :1]).numpy()
    def broken(z):
        raise RuntimeError("out of memory")
    NOT_CALLABLE = 3
"""


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("latent_run")
    data = write_latents(folder / "z.npz")
    dec = write_module(folder, "latent_run_decoder", DECODER)
    cfg = tiny_cfg(str(data), True, decoder=f"{dec}:decode", **SMALL)
    t = trainer(cfg, folder / "run", plots=True)
    t.run()
    return folder / "run"


def test_the_run_stores_the_channel_statistics_of_the_training_split(tmp_path, latent_run):
    cfg = load_run(latent_run).config
    data = open_dataset(cfg.dataset)
    mean, std = channel_mean_std(data)
    assert cfg.latent and cfg.model["channel_mean"] == mean and cfg.model["channel_scale"] == std
    assert (cfg.model["data_mean"], cfg.model["data_std"]) == (0.0, 1.0)
    assert cfg.data.decoder.endswith("latent_run_decoder.py:decode")
    assert cfg.data.decoder.startswith("/")   # a .py path is stored absolute
    # the config round-trips, and image runs have no normalisation
    assert TrainConfig.from_dict(json.loads((latent_run / "config.json").read_text())) == cfg
    digits = make_config("digits", model=TINY, iters=1)
    assert not digits.latent and digits.model["channel_mean"] is None


def test_scaling_the_latents_by_two_shifts_test_nats_per_dim_by_log_two(tmp_path):
    """The stored normalisation of ``2 z`` has twice the mean and scale, so a model with the
    same weights sees the very same normalised latents: the density of ``2 z`` is that of
    ``z`` over ``2^D``, test nats/dim is larger by exactly log 2."""
    out = {}
    for factor in (1.0, 2.0):
        path = write_latents(tmp_path / f"z{factor:g}.npz", factor=factor)
        cfg = make_config(str(path), model=TINY, iters=1)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        out[factor] = evaluate_bpd(model, cfg, "cpu", samples=2)
    assert set(out[1.0]) == {"nats_per_dim", "nats_per_dim_sem", "n"}
    assert out[2.0]["nats_per_dim"] - out[1.0]["nats_per_dim"] == pytest.approx(math.log(2),
                                                                                 abs=1e-5)


def test_training_logs_nats_per_dim_and_draws_latents_through_the_decoder(latent_run):
    recs = [json.loads(line) for line in (latent_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["type"] == "train"]
    evals = [r for r in recs if r["type"] == "eval"]
    assert all("train_nats_per_dim" in r and "train_bpd" not in r for r in train)
    assert evals and all(math.isfinite(r["test_nats_per_dim"]) and "test_bpd" not in r
                         for r in evals)
    # 12 decoded 3x8x8 images, 10 per row, no title
    assert Image.open(latent_run / "samples.png").size == (10 * 66 + 2, 2 * 66 + 2)


def test_without_a_decoder_the_grid_shows_the_first_channels_normalised(tmp_path, latent_run):
    cfg = load_run(latent_run).config
    z = torch.tensor(cfg.model["channel_mean"]).view(1, 4, 1, 1) + torch.tensor(
        cfg.model["channel_scale"]).view(1, 4, 1, 1) * torch.tensor([0.0, 1.5, -3.0, 9.0]).view(
        1, 4, 1, 1).expand(2, 4, 4, 4)
    images, what = plots.latent_preview(z, cfg.model["channel_mean"], cfg.model["channel_scale"])
    assert images.shape == (2, 3, 4, 4) and what == "channels 0-2 as RGB, mean +- 3 std"
    torch.testing.assert_close(images[:, :, 0, 0], torch.tensor([[0.0, 0.5, -1.0]] * 2))
    grey, what = plots.latent_preview(z[:, :2], [0, 0], [1, 1])
    assert grey.shape == (2, 1, 4, 4) and what == "channel 0, mean +- 3 std"
    # a run's grid without a decoder: that view, under a title (14 pixels) that says so
    images, title = grid_images(z, cfg.replace(decoder=None))
    assert title == "latents, channels 0-2 as RGB, mean +- 3 std"
    plots.save_digit_grid(images, tmp_path / "l.png", title=title)
    assert Image.open(tmp_path / "l.png").size == (2 * 34 + 2, 34 + 2 + 14)   # 4x4 cells
    # with the run's decoder: decoded 3x8x8 images, no title
    assert run_cli("sample", latent_run, "-n", 3, "--out", tmp_path / "d.png",
                   "--threads", 1) == 0
    assert Image.open(tmp_path / "d.png").size == (3 * 66 + 2, 66 + 2)


def test_sample_writes_raw_latents_that_are_a_dataset_again(tmp_path, latent_run):
    r = load_run(latent_run)
    assert run_cli("sample", latent_run, "-n", 8, "--seed", 3, "--out", tmp_path / "s.npz",
                   "--save-npy", "--threads", 1) == 0
    s = np.load(tmp_path / "s.npz")
    assert sorted(s.files) == ["labels", "latents"]    # (a class-conditional run)
    # the model's samples (in the data's scale: models/normalization.py), labels 0..K-1 cycled
    want = r.model.sample(8, y=torch.arange(8) % 3, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(s["latents"], want.numpy(), rtol=0, atol=1e-6)
    assert s["labels"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), s["latents"])
    again = open_dataset(tmp_path / "s.npz", test_fraction=0.25)
    assert again.continuous and again.shape == (4, 4, 4) and again.num_classes == 3
    assert (tmp_path / "s.png").exists()
    with pytest.raises(SystemExit, match="--labels must be classes 0..2, got '1,3'"):
        run_cli("sample", latent_run, "-n", 2, "--labels", "1,3")


@pytest.mark.parametrize("spec, error, match", [
    ("decode", OptionError, r"--decoder must be MODULE:FUNCTION .*got 'decode'"),
    ("mod:", OptionError, "--decoder must be MODULE:FUNCTION"),
    ("mod:1x", OptionError, "--decoder must be MODULE:FUNCTION"),
    ("no_such_module_here:decode", ConfigError,
     r"--decoder no_such_module_here:decode: no module named 'no_such_module_here' \(searched "
     r"the current folder"),
    ("{dir}/missing.py:decode", ConfigError, r"--decoder .*missing.py:decode: no such Python "
     r"file"),
    ("decoders_here:nothing", ConfigError,
     r"--decoder decoders_here:nothing: decoders_here has no attribute 'nothing'"),
    ("decoders_here:NOT_CALLABLE", ConfigError, r"NOT_CALLABLE is not callable \(a int\)"),
])
def test_bad_decoder_specs_are_named(tmp_path, monkeypatch, spec, error, match):
    write_module(tmp_path, "decoders_here", DECODER)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        load_decoder(decoder_spec(spec.format(dir=tmp_path)))


def test_the_module_is_found_from_the_current_folder_or_as_a_file(tmp_path, monkeypatch):
    path = write_module(tmp_path, "found_from_cwd", DECODER)
    z = torch.randn(5, 4, 4, 4)
    monkeypatch.chdir(tmp_path)
    a = load_decoder("found_from_cwd:decode")(z)
    monkeypatch.chdir("/")
    b = load_decoder(f"{path}:decode")(z)
    assert a.shape == (5, 3, 8, 8) and torch.equal(a, b)
    assert load_decoder(f"{path}:numpy_out")(z).shape == (5, 1, 4, 4)   # arrays are fine


@pytest.mark.parametrize("name, match", [
    ("wrong_shape", r"expected images \[B, 1 or 3, h, w\] with B = 5 for latents \[5, 4, 4, "
     r"4\], got shape \[5, 2, 4, 4\]"),
    ("broken", r"calling it on latents of shape \[5, 4, 4, 4\] failed: RuntimeError: out of "
     r"memory"),
])
def test_a_decoder_that_returns_no_images_is_named(tmp_path, name, match):
    path = write_module(tmp_path, "bad_outputs", DECODER)
    with pytest.raises(ConfigError, match=rf"--decoder .*bad_outputs.py:{name}: {match}"):
        load_decoder(f"{path}:{name}")(torch.randn(5, 4, 4, 4))


def test_train_refuses_a_bad_decoder_before_writing_anything(tmp_path):
    data = write_latents(tmp_path / "z.npz")
    path = write_module(tmp_path, "dec_check", DECODER)
    for name, match in (("wrong_shape", "expected images"),
                        ("signed", r"expected images in \[0, 1\], got values in \[-1")):
        cfg = tiny_cfg(str(data), decoder=f"{path}:{name}", **SMALL)
        with pytest.raises(ConfigError, match=rf"--decoder .*dec_check.py:{name}: {match}"):
            trainer(cfg, tmp_path / name)
        assert not (tmp_path / name / "config.json").exists()
    # on the command line: exit status 2 for a malformed spec, 1 with the message otherwise
    with pytest.raises(SystemExit) as e:
        run_cli("train", "--dataset", data, "--decoder", "nocolon", "--iters", 1, "--out",
                tmp_path / "cli")
    assert e.value.code == 2
    with pytest.raises(SystemExit, match="ntm train: error: --decoder nope_mod:f: no module"):
        run_cli("train", "--dataset", data, "--decoder", "nope_mod:f", "--iters", 1, "--out",
                tmp_path / "cli")


def test_a_decoder_is_for_latent_runs_only(tmp_path, latent_run):
    digits = make_config("digits", model=TINY, iters=1, decoder="m:f")
    with pytest.raises(ConfigError, match=r"--decoder \(stored in the run's config\) m:f: a "
                       r"decoder turns latents into images; the data of this run \(digits\)"):
        run_decoder(digits)
    with pytest.raises(ConfigError, match="--decoder x:y: a decoder turns latents"):
        run_decoder(make_config("digits", model=TINY, iters=1), "x:y")
    with pytest.raises(ConfigError, match="--decoder applies to latent data, not the 2-D toy"):
        make_config("two_moons", model=TINY, iters=1, decoder="m:f")
    # a run whose stored decoder cannot be imported says it is the stored one
    r = load_run(latent_run)
    with pytest.raises(ConfigError, match=r"--decoder \(stored in the run's config\) "):
        run_decoder(r.config.replace(decoder=str(tmp_path / "gone.py") + ":decode"))


def test_score_and_eval_refuse_images_for_a_latent_model(tmp_path, latent_run):
    with pytest.raises(SystemExit, match=r"--dataset digits: images .*the model scores latents "
                       r"of shape \[4, 4, 4\]"):
        run_cli("score", latent_run, "--dataset", "digits", "--bpd-samples", 1)
    assert run_cli("score", latent_run, "--bpd-samples", 1, "--labels", "--out",
                   tmp_path / "s.csv") == 0
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert list(rows[0]) == ["index", "label", "nats_per_dim"] and rows[0]["label"] != ""


def test_a_resumed_run_may_change_its_decoder(tmp_path, monkeypatch):
    """The decoder is not part of the run's identity: ``--resume --decoder`` stores the new
    one (a relative .py path made absolute) and draws the grids with it."""
    write_latents(tmp_path / "z.npz")
    write_module(tmp_path, "dec_resume", DECODER)
    monkeypatch.chdir(tmp_path)
    args = ["train", "--dataset", "z.npz", "--out", "run", "--width", 32, "--depth", 1,
            "--heads", 2, "--transporter-layers", 1, "--batch-size", 16, "--eval-every", 2,
            "--eval-samples", 3, "--no-progress", "--threads", 1]
    assert run_cli(*args, "--iters", 2) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["decoder"] is None
    assert Image.open(tmp_path / "run" / "samples.png").size == (3 * 34 + 2, 34 + 2 + 14)
    assert run_cli(*args, "--iters", 4, "--resume", "--decoder", "dec_resume.py:decode") == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["decoder"] == f"{tmp_path / 'dec_resume.py'}:decode"
    assert Image.open(tmp_path / "run" / "samples.png").size == (3 * 66 + 2, 66 + 2)


def test_eval_compares_decoded_images_only_when_they_are_small(tmp_path, latent_run):
    cfg = load_run(latent_run).config
    small = load_decoder(cfg.data.decoder)
    big = load_decoder(str(write_module(tmp_path, "big_dec", """
        import torch
        def decode(z):   # 3x64x64: 12288 values per image
            return torch.sigmoid(z[:, :3]).repeat_interleave(16, 2).repeat_interleave(16, 3)
    """)) + ":decode")
    s = torch.randn(20, 4, 4, 4) * 3
    for decoder, has_decoded, says in ((None, False, "no --decoder: no measure on images"),
                                       (small, True, "frechet_distance_decoded: of the decoded "
                                        "samples to 6 decoded test latents"),
                                       (big, False, "frechet_distance_decoded skipped: decoded "
                                        "images have 12288 values")):
        quality, note = latent_quality(cfg.data, decoder)
        out = quality(s)
        assert says in note and math.isfinite(out["frechet_distance_latent"])
        assert ("frechet_distance_decoded" in out) == has_decoded
        assert not [k for k in out if "raw" in k or "bpd" in k]
