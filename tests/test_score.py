"""``ntm score`` and exact likelihoods as a product: per-image bits/dim in the data's order,
a CSV and a histogram, and a digits model that tells held-out digits from corrupted ones
(AUROC; the figures are printed, the clear cases asserted)."""
import csv
import math

import pytest
import torch

from ntm_engine import load_run
from ntm_engine.data import DIGITS_BINS, colour_patches, load_digits
from ntm_engine.training.scoring import auroc, image_bits_per_dim

from test_cli import fast_classifier, run_cli  # noqa: F401  (an autouse fixture)

TRAIN = ["--class-conditional", "--width", "64", "--depth", "2", "--heads", "2",
         "--transporter-layers", "2", "--transporter-hidden", "64", "--batch-size", "64",
         "--iters", "250", "--eval-every", "1000", "--eval-samples", "0", "--ckpt-every", "250",
         "--no-plots", "--no-progress", "--threads", "2"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "run"
    assert run_cli("train", "--dataset", "digits", *TRAIN, "--out", out) == 0
    return out


def test_auroc_is_the_probability_an_outlier_scores_higher():
    assert auroc([1, 2, 3], [4, 5]) == 1.0
    assert auroc([4, 5], [1, 2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([1, 3], [2]) == 0.5
    with pytest.raises(ValueError, match="both sets non-empty"):
        auroc([], [1.0])


def test_the_command_writes_one_score_per_image_in_the_datas_order(digits_run, tmp_path):
    out = tmp_path / "scores.csv"
    assert run_cli("score", digits_run, "--bpd-samples", 2, "--out", out) == 0
    rows = list(csv.DictReader(out.open()))
    x, y = load_digits("test")
    assert [int(r["index"]) for r in rows] == list(range(len(x)))
    assert [int(r["label"]) for r in rows] == y.tolist()
    bpd = torch.tensor([float(r["bits_per_dim"]) for r in rows], dtype=torch.float64)
    assert torch.isfinite(bpd).all()
    assert (tmp_path / "scores.png").stat().st_size > 0
    # the same numbers as the Python API with the same seed and trajectories
    model = load_run(digits_run).model
    same = image_bits_per_dim(model, x, None, bins=DIGITS_BINS, samples=2, seed=0)
    torch.testing.assert_close(bpd, same, rtol=0, atol=1e-6)   # (the CSV keeps 6 decimals)
    # p(x | y) with the labels is another number, and lower on average for the true labels
    assert run_cli("score", digits_run, "--bpd-samples", 2, "--labels", "--out",
                   tmp_path / "cond.csv") == 0
    cond = torch.tensor([float(r["bits_per_dim"]) for r in csv.DictReader(
        (tmp_path / "cond.csv").open())], dtype=torch.float64)
    assert cond.mean() < bpd.mean()


def test_the_score_is_differentiable_in_the_image(digits_run):
    model = load_run(digits_run).model
    x = load_digits("test")[0][:4].clone().requires_grad_()
    model.log_prob(x, samples=2, generator=torch.Generator().manual_seed(0)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def corrupted(x):
    g = torch.Generator().manual_seed(7)
    patches = colour_patches().tensors("test")[0][:len(x)]
    grey = torch.nn.functional.interpolate(patches.mean(1, keepdim=True), size=(8, 8),
                                           mode="area")
    return {
        "uniform noise": torch.rand(x.shape, generator=g) * 2 - 1,
        "inverted": -x,
        "shifted 2 px": torch.roll(x, shifts=(2, 2), dims=(2, 3)),
        "colour patches, grey": grey.clamp(-1, 1),
    }


def test_the_digits_model_tells_held_out_digits_from_corrupted_ones(digits_run, capsys):
    model = load_run(digits_run).model
    x, _ = load_digits("test")
    held_out = image_bits_per_dim(model, x, bins=DIGITS_BINS, samples=4)
    figures = {}
    for name, xc in corrupted(x).items():
        figures[name] = auroc(held_out, image_bits_per_dim(model, xc, bins=DIGITS_BINS,
                                                           samples=4))
    with capsys.disabled():
        print("\nAUROC of the digits model (250 iterations) against held-out digits: "
              + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    assert figures["uniform noise"] >= 0.95 and figures["inverted"] >= 0.95, figures
    assert all(0 <= v <= 1 and not math.isnan(v) for v in figures.values())


def test_bad_requests_are_named(digits_run, tmp_path):
    with pytest.raises(SystemExit, match="ntm score: error: --labels: --dataset "
                                         "colour-patches has no labels"):
        run_cli("score", digits_run, "--dataset", "colour-patches", "--labels",
                "--out", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(SystemExit):
        run_cli("score", digits_run, "--bpd-samples", 0)
