"""``ntm compare --train``: the three runs trained with one budget and the same options,
resumed rather than retrained, the report on colour images rated by the raw-pixel Frechet
distance of ``ntm eval``, and the option errors (before any work)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")

from ntm_engine import checkpoint as ckpt  # noqa: E402
from ntm_engine import cli  # noqa: E402
from ntm_engine.compare.quality import (REFERENCE_SEED, TRAIN_REFERENCE,  # noqa: E402
                                        held_out_examples, rating_for,
                                        shared_data)
from ntm_engine.training import test_data  # noqa: E402
from tests.run_testutils import sigkill_when  # noqa: E402

TINY = "--width 16 --depth 1 --heads 2 --batch-size 16 --ckpt-every 2 --eval-every 2 " \
       "--eval-samples 0 --no-plots --steps 2"
BACKBONE = ("width", "depth", "heads", "patch_size")
ROOT = Path(__file__).resolve().parents[2]


def compare(out, *extra, dataset="two_moons", iters=2, options=TINY, n=8):
    return cli.main(["compare", "--train", "--dataset", dataset, "--iters", str(iters),
                     "--train-options", options, "--n", str(n), "--steps", "1",
                     "--schedulers", "flow_euler", "--no-progress", "--device", "cpu",
                     "--out", str(out), *extra])


def report(out):
    return json.loads((out / "quality_vs_steps.json").read_text())


def events(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["event"], r["step"]) for r in map(json.loads, lines) if r["type"] == "event"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A compare that trained its three toy runs for 2 iterations."""
    out = tmp_path_factory.mktemp("compare_train") / "cmp"
    assert compare(out) == 0
    return out


def test_train_makes_the_three_runs_with_one_budget_and_backbone(trained):
    cfgs = {r: json.loads((trained / r / "config.json").read_text())
            for r in ("ntm", "fm", "ablation")}
    assert {r: c["objective"] for r, c in cfgs.items()} == {
        "ntm": "ntm", "fm": "flow_matching", "ablation": "ntm"}
    assert {r: c["model"]["transporter"] for r, c in cfgs.items() if r != "fm"} == {
        "ntm": "coupling", "ablation": "none"}
    for r, c in cfgs.items():
        assert [c["model"][k] for k in BACKBONE] == [16, 1, 2, cfgs["ntm"]["model"]["patch_size"]]
        assert (c["iters"], c["minutes"], c["batch_size"]) == (2, None, 16)
        assert [s for s, _ in ckpt.list_checkpoints(trained / r)] == [2]
    data = report(trained)
    assert sorted((r["sampler"], r["steps"]) for r in data["rows"]) == [
        ("flow_euler", 1), ("ntm", 2), ("ntm_identity_transporter", 4)]
    for role in ("ntm", "fm", "ablation"):
        run = data["meta"][f"{role}_run"]
        assert run["step"] == 2 and run["budget"] == "iters=2, minutes=None"
        assert run["train_elapsed_s"] > 0
    md = (trained / "quality_vs_steps.md").read_text()
    assert "- fm_run: {" in md and "'budget': 'iters=2, minutes=None'" in md
    assert (trained / "quality_vs_steps.png").stat().st_size > 1000


def test_a_second_compare_does_not_retrain_finished_runs(trained, capsys):
    before = {r: events(trained / r) for r in ("ntm", "fm", "ablation")}
    assert compare(trained) == 0
    assert {r: events(trained / r) for r in before} == before
    assert capsys.readouterr().err.count("is finished (step 2") == 3


def test_a_larger_budget_resumes_each_run(tmp_path):
    out = tmp_path / "cmp"
    assert compare(out) == 0
    assert compare(out, iters=4) == 0
    for r in ("ntm", "fm", "ablation"):
        assert events(out / r)[-2:] == [("resume", 2), ("end", 4)]
        assert ckpt.list_checkpoints(out / r)[-1][0] == 4
    assert all(report(out)["meta"][f"{r}_run"]["step"] == 4 for r in ("ntm", "fm", "ablation"))


def test_each_run_can_have_its_own_iteration_budget(tmp_path):
    """--iters ntm=N,fm=N,ablation=N: the same wall-clock by measured per-iteration costs."""
    out = tmp_path / "cmp"
    assert compare(out, iters="ntm=4,fm=6,ablation=2") == 0
    steps = {r: report(out)["meta"][f"{r}_run"]["step"] for r in ("ntm", "fm", "ablation")}
    assert steps == {"ntm": 4, "fm": 6, "ablation": 2}
    assert json.loads((out / "fm" / "config.json").read_text())["iters"] == 6


def test_a_killed_compare_continues_where_it_stopped(tmp_path):
    """SIGKILL while the flow-matching run trains; run again, the NTM is kept, the FM run
    resumes from its last checkpoint and the ablation is trained."""
    out = tmp_path / "cmp"
    options = TINY + " --ckpt-every 4 --eval-every 100 --throttle 0.05"
    argv = ["compare", "--train", "--dataset", "two_moons", "--iters", "20", "--train-options",
            options, "--n", "8", "--steps", "1", "--schedulers", "flow_euler", "--no-progress",
            "--device", "cpu", "--threads", "1", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "ntm_engine", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # killed once the NTM is finished and the FM run has a checkpoint
    sigkill_when(proc, lambda: bool(ckpt.list_checkpoints(out / "fm")), timeout=300)
    ntm_events = events(out / "ntm")
    fm_step = ckpt.load_latest(out / "fm").step
    assert ntm_events[-1] == ("end", 20) and 4 <= fm_step < 20
    assert not (out / "ablation").exists()

    assert compare(out, iters=20, options=options) == 0
    assert events(out / "ntm") == ntm_events
    assert events(out / "fm")[-2:] == [("resume", fm_step), ("end", 20)]
    assert events(out / "ablation") == [("start", 0), ("end", 20)]
    assert {report(out)["meta"][f"{r}_run"]["step"] for r in ("ntm", "fm", "ablation")} == {20}


def test_colour_patches_are_rated_by_the_raw_pixel_distance(tmp_path):
    out = tmp_path / "cmp"
    assert compare(out, "--image-size", "8", dataset="colour-patches", n=64) == 0
    assert json.loads((out / "fm" / "config.json").read_text())["model"]["data_shape"] == [
        3, 8, 8]
    data = report(out)
    fds = [r["frechet_distance_raw"] for r in data["rows"]]
    assert len(fds) == 3 and all(math.isfinite(v) for v in fds)
    assert data["meta"]["metric"].startswith("Frechet distance of the raw values (image pixels")
    # 64 real patches are far closer to the test split than 64 samples of 2-iteration models
    assert 0 < data["meta"]["reference_frechet_distance"] < min(fds) / 2
    md = (out / "quality_vs_steps.md").read_text()
    assert "| Frechet distance (raw) |" in md and "64 held-out real examples" in md


COLOUR8 = {"dataset": "colour-patches", "class_conditional": False, "image_size": 8,
           "model": {"data_shape": [3, 8, 8]}}


def test_the_raw_rating_compares_with_the_test_split_of_the_runs_data():
    rating = rating_for({"ntm": COLOUR8, "fm": COLOUR8}, 32)
    data = shared_data({"ntm": COLOUR8})
    x_test = test_data(data)[0]
    assert rating.metric == "frechet_distance_raw" and rating.labels is None
    assert abs(rating.quality(x_test)["frechet_distance_raw"]) < 1e-3 * rating.reference
    noise = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert rating.quality(noise)["frechet_distance_raw"] > 2 * rating.reference


def test_colour_patches_are_also_rated_against_training_examples():
    """Next to the test split (another region of the photographs, a floor for every sampler)
    the distance to training examples: real held-out training patches score its reference,
    the test split scores far worse (the region gap), noise worse still; and the reference's
    examples are training patches disjoint from the ones it compares with."""
    rating = rating_for({"ntm": COLOUR8, "fm": COLOUR8}, 64)
    data = shared_data({"ntm": COLOUR8})
    ref = rating.other_references["frechet_distance_train"]
    real = held_out_examples(data, 64, seed=REFERENCE_SEED + 1, offset=TRAIN_REFERENCE)
    assert rating.quality(real)["frechet_distance_train"] == pytest.approx(ref, rel=1e-9)
    x_test = test_data(data)[0][:64]
    assert rating.quality(x_test)["frechet_distance_train"] > 1.5 * ref
    noise = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert rating.quality(noise)["frechet_distance_train"] > 10 * ref
    compared = held_out_examples(data, TRAIN_REFERENCE, seed=REFERENCE_SEED + 1).flatten(1)
    assert torch.cdist(real.flatten(1), compared).min() > 0
    train = data_split(data, "train").flatten(1)
    assert torch.cdist(real.flatten(1), train).min(1).values.max() == 0


def test_digits_are_rated_by_the_classifier_and_by_the_raw_pixels():
    """Digits carry both distances: the classifier's features (which saturate: good solvers
    score what real digits score) and the raw pixels, each with what real digits score."""
    digits = {"dataset": "digits", "class_conditional": True, "model": {"data_shape": [1, 8, 8]}}
    rating = rating_for({"ntm": digits, "fm": digits}, 64)
    assert rating.metric == "frechet_distance" and list(rating.labels.shape) == [64]
    real = held_out_examples(shared_data({"ntm": digits}), 64)
    q_real = rating.quality(real)
    assert set(q_real) >= {"frechet_distance", "frechet_distance_raw", "class_accuracy"}
    assert q_real["frechet_distance_raw"] == pytest.approx(
        rating.other_references["frechet_distance_raw"], rel=1e-9)
    blurred = torch.nn.functional.avg_pool2d(real, 3, 1, 1)
    assert rating.quality(blurred)["frechet_distance_raw"] > 2 * q_real["frechet_distance_raw"]


def test_the_reference_examples_are_held_out_training_images():
    data = shared_data({"ntm": COLOUR8})
    x = held_out_examples(data, 16)
    train = data_split(data, "train").flatten(1)
    assert x.shape == (16, 3, 8, 8)
    assert torch.cdist(x.flatten(1), train).min(1).values.max() == 0   # each is a train image
    assert torch.cdist(x.flatten(1), test_data(data)[0].flatten(1)).min() > 0


def data_split(data, split):
    from ntm_engine.training import run_data
    return run_data(data).tensors(split)[0]


def test_runs_of_other_image_sizes_are_refused():
    sixteen = dict(COLOUR8, image_size=16, model={"data_shape": [3, 16, 16]})
    with pytest.raises(ValueError) as exc:
        shared_data({"ntm": COLOUR8, "fm": sixteen})
    assert "the runs must share data_shape, got {'ntm': [3, 8, 8], 'fm': [3, 16, 16]}" in str(
        exc.value)


def test_changed_run_options_are_refused_before_training(trained, capsys):
    with pytest.raises(SystemExit) as exc:
        compare(trained, options=TINY.replace("--width 16", "--width 32"))
    assert f"the NTM ({trained / 'ntm'}): --resume: the checkpoint" in str(exc.value)
    assert "model.width: checkpoint 16 vs requested 32" in str(exc.value)


@pytest.mark.parametrize("argv,needle", [
    (["--train"], "--train needs --dataset"),
    (["runs/ntm", "--train", "--dataset", "digits"],
     "--train trains its own runs into --out; give no NTM_RUN, got 'runs/ntm'"),
    (["--train", "--dataset", "digits", "--fm", "runs/fm"], "give no --fm, got 'runs/fm'"),
    (["runs/ntm", "--fm", "runs/fm", "--dataset", "digits"],
     "--dataset applies with --train only"),
    (["runs/ntm", "--fm", "runs/fm", "--minutes", "5"], "--minutes applies with --train only"),
    (["runs/ntm"], "give NTM_RUN and --fm FM_RUN (existing runs), or --train --dataset D"),
    (["--train", "--dataset", "two_moons", "--iters", "0"],
     "argument --iters: expected a positive integer or ntm=N,fm=N,ablation=N, got '0'"),
    (["--train", "--dataset", "two_moons", "--iters", "ntm=5,fm=5"],
     "argument --iters: expected a positive integer or ntm=N,fm=N,ablation=N, got 'ntm=5,fm=5'"),
    (["--train", "--dataset", "two_moons", "--iters", "ntm=5,fm=x,ablation=5"],
     "argument --iters: expected a positive integer or ntm=N,fm=N,ablation=N, got"),
    (["--train", "--dataset", "two_moons", "--seed", "1,1"],
     "argument --seed: expected an integer or distinct comma-separated integers, got '1,1'"),
    (["--train", "--dataset", "two_moons", "--minutes", "nan"],
     "argument --minutes: expected a number > 0, got 'nan'"),
    (["--train", "--dataset", "two_moons", "--train-options", "--out elsewhere"],
     "--train-options must not contain --out (the runs go to --out/ntm"),
    (["--train", "--dataset", "two_moons", "--train-options", "--iter 5"],
     "--train-options must not contain --iters (give the budget to ntm compare)"),
    (["--train", "--dataset", "two_moons", "--train-options", "--objective ntm"],
     "--train-options must not contain --objective"),
    (["--train", "--dataset", "two_moons", "--train-options", "--widht 8"],
     "ntm compare --train-options: error: unrecognized arguments: --widht 8"),
])
def test_bad_options_are_named_before_any_work(argv, needle, tmp_path, capsys):
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as exc:
        cli.main(["compare", *argv, "--out", str(out), "--device", "cpu", "--no-progress"])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()
