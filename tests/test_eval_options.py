"""``ntm eval`` per trained step count, with the importance-weighted and unconditional bits/dim
and the histogram baseline; the trajectory-denoise sampler in ``ntm sample`` and ``ntm eval``."""
import json

import pytest
import torch

from ntm_engine.data import load_digits
from ntm_engine.models import histogram_bits_per_dim
from ntm_engine.training import load_run

from test_cli import fast_classifier, run_cli  # noqa: F401  (an autouse fixture)

TINY = ["--width", "16", "--depth", "1", "--heads", "2", "--batch-size", "16", "--iters", "2",
        "--eval-every", "2", "--ckpt-every", "2", "--eval-samples", "0", "--no-progress",
        "--no-plots"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_opts") / "run"
    assert run_cli("train", "--class-conditional", "--steps", "2,4", *TINY, "--out", out) == 0
    return out


def test_eval_reports_each_trained_T_and_the_baselines(run, tmp_path):
    out = tmp_path / "e.json"
    assert run_cli("eval", run, "--n-samples", 20, "--bpd-samples", 4, "--out", out) == 0
    res = json.loads(out.read_text())
    assert set(res["bpd_per_steps"]) == set(res["samples_per_steps"]) == {"2", "4"}
    two = res["bpd_per_steps"]["2"]
    assert res["test_bpd"] == pytest.approx(two["bpd"], rel=1e-9)
    assert res["test_bpd_iw"] == two["bpd_iw"] and two["bpd_iw"] != two["bpd"]
    assert {"bpd_uncond", "bpd_iw_uncond"} <= set(two)
    # a class-conditional model's bound is named for what it bounds: p(x | y)
    assert two["bpd_cond"] == two["bpd"] and two["bpd_iw_cond"] == two["bpd_iw"]
    assert res["test_bpd_cond"] == res["test_bpd"] and "p(x | y)" in res["bpd_note"]
    assert res["bpd_per_steps"]["4"]["bpd"] != two["bpd"]
    (xtr, ytr), (xte, yte) = load_digits("train"), load_digits("test")
    hist = res["histogram_baseline_bpd"]
    assert hist["bpd"] == pytest.approx(float(histogram_bits_per_dim(xtr, xte, 17).mean()))
    assert hist["bpd_conditional"] < hist["bpd"]
    assert res["frechet_distance"] == res["samples_per_steps"]["2"]["frechet_distance"]
    assert res["t_d"] == 0.05
    for k in ("transporter_at_t_d", "trajectory_denoise"):
        assert res[k]["sample_ms_per_sample"] > 0 and "frechet_distance" in res[k]


def test_sample_trajectory_denoise_is_the_models_sampler(run, tmp_path):
    assert run_cli("sample", run, "-n", 6, "--steps", 4, "--sampler", "trajectory-denoise",
                   "--t-min", 0.03, "--seed", 2, "--out", tmp_path / "s.png", "--save-pt") == 0
    got = torch.load(tmp_path / "s.pt")["samples"]
    model = load_run(run).model
    want = model.sample(6, y=torch.arange(6) % 10, steps=4, sampler="trajectory-denoise",
                        t_min=0.03, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(got, want)
    plain = model.sample(6, y=torch.arange(6) % 10, steps=4, t_min=0.03,
                         generator=torch.Generator().manual_seed(2))
    assert (got - plain).abs().max() > 1e-4
