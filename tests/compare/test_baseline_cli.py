"""``ntm compare`` wiring (ntm_engine.cli.compare) on tiny untrained toy models, loaded by a
stand-in for the CLI's ``load_model``: options, the runs' agreement, the files written."""
import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("diffusers")
# diffusers builds numpy arrays from tensors the way numpy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")

from ntm_engine.cli.compare import add_compare_arguments, cmd_compare  # noqa: E402
from ntm_engine.models import NTM, FlowMatchingModel  # noqa: E402

TOY = dict(data_shape=(2,), steps=2, num_classes=0, width=16, depth=1, heads=2, patch_size=2)


def fake_runs(tmp_path, ntm_dataset="two_moons"):
    """``load_model(path, device, use_ema)`` over three fake runs: ntm, fm, ablation."""
    torch.manual_seed(0)
    runs = {"ntm": (NTM(**TOY, transporter_layers=1, transporter_hidden=8), ntm_dataset, "ntm"),
            "fm": (FlowMatchingModel(**TOY), "two_moons", "flow_matching"),
            "abl": (NTM(**TOY, transporter_layers=0), "two_moons", "ntm")}

    def load_model(path, device, use_ema=True):
        model, dataset, objective = runs[Path(path).name]
        cfg = {"dataset": dataset, "class_conditional": False, "objective": objective,
               "model": dict(TOY)}
        ck = SimpleNamespace(path=tmp_path / Path(path).name / "checkpoints" / "step_1", step=1,
                             state={"config": cfg, "elapsed_s": 1.0}, config=cfg)
        return model.eval(), ck
    return load_model


def parse(argv):
    p = argparse.ArgumentParser(prog="compare")
    add_compare_arguments(p)
    return p, p.parse_args(argv)


def test_compare_writes_the_report(tmp_path, capsys):
    parser, args = parse(["runs/ntm", "--fm", "runs/fm", "--ablation", "runs/abl", "--n", "8",
                          "--steps", "1,2", "--schedulers", "unipc,flow_euler",
                          "--ablation-steps", "2", "--out", str(tmp_path / "cmp"),
                          "--no-progress", "--device", "cpu"])
    rc = cmd_compare(args, parser, load_model=fake_runs(tmp_path), device_of=torch.device,
                     log=lambda m: None)
    assert rc == 0
    data = json.loads((tmp_path / "cmp" / "quality_vs_steps.json").read_text())
    got = sorted((r["sampler"], r["steps"]) for r in data["rows"])
    assert got == [("flow_euler", 1), ("flow_euler", 2), ("ntm", 2),
                   ("ntm_identity_transporter", 2), ("unipc", 1), ("unipc", 2)]
    assert all("frechet_distance_raw" in r for r in data["rows"])
    assert data["meta"]["machine"]["torch"] == torch.__version__
    assert data["meta"]["ntm_run"]["step"] == 1
    # toys: the raw-value distance, and what as many fresh real samples score on it
    assert data["meta"]["metric"].startswith("Frechet distance of the raw values (image pixels")
    assert 0 < data["meta"]["reference_frechet_distance"] < min(
        r["frechet_distance_raw"] for r in data["rows"])
    assert "| unipc | flow_matching | 2 | 2 |" in capsys.readouterr().out


def test_several_seeds_give_the_mean_and_standard_error(tmp_path):
    """--seed 3,4,5: one row per sampler holding the mean over the seeds, its standard error
    and each seed's figure; the first seed's figure is what --seed 3 alone gives."""
    def rows(seed, out):
        parser, args = parse(["runs/ntm", "--fm", "runs/fm", "--n", "16", "--steps", "2",
                              "--schedulers", "flow_euler", "--seed", seed, "--out",
                              str(tmp_path / out), "--no-progress", "--device", "cpu"])
        assert cmd_compare(args, parser, load_model=fake_runs(tmp_path), device_of=torch.device,
                           log=lambda m: None) == 0
        data = json.loads((tmp_path / out / "quality_vs_steps.json").read_text())
        return data, {r["sampler"]: r for r in data["rows"]}
    single, one = rows("3", "one")
    data, several = rows("3,4,5", "several")
    assert data["meta"]["seed"] == [3, 4, 5] and single["meta"]["seed"] == 3
    key = "frechet_distance_raw"
    for name, r in several.items():
        vals = r[f"{key}_per_seed"]
        assert len(vals) == 3 and len(set(vals)) == 3 and r["seeds"] == [3, 4, 5]
        assert vals[0] == one[name][key]
        assert r[key] == pytest.approx(sum(vals) / 3, rel=1e-12)
        assert r[f"{key}_sem"] == pytest.approx(torch.tensor(vals).std().item() / 3 ** 0.5,
                                                rel=1e-6)
        assert f"{key}_sem" not in one[name]
    md = (tmp_path / "several" / "quality_vs_steps.md").read_text()
    r = several["flow_euler"]
    assert f"| {r[key]:.4f} +- {r[key + '_sem']:.4f} |" in md


def test_runs_on_different_datasets_are_refused(tmp_path):
    parser, args = parse(["runs/ntm", "--fm", "runs/fm", "--n", "4", "--no-progress",
                          "--device", "cpu", "--out", str(tmp_path / "cmp")])
    with pytest.raises(SystemExit):
        cmd_compare(args, parser, load_model=fake_runs(tmp_path, ntm_dataset="checkerboard"),
                    device_of=torch.device, log=lambda m: None)
    assert not (tmp_path / "cmp").exists()


def test_runs_in_the_wrong_role_are_refused(tmp_path, capsys):
    parser, args = parse(["runs/fm", "--fm", "runs/ntm", "--n", "4", "--no-progress",
                          "--device", "cpu", "--out", str(tmp_path / "cmp")])
    with pytest.raises(SystemExit):
        cmd_compare(args, parser, load_model=fake_runs(tmp_path), device_of=torch.device,
                    log=lambda m: None)
    assert "must be an NTM run, got objective 'flow_matching'" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["--steps", "4,0"], "expected comma-separated positive integers, got '4,0'"),
    (["--schedulers", "unipc,ddim"], "expected comma-separated names among"),
])
def test_bad_options_are_named(argv, needle, capsys):
    with pytest.raises(SystemExit):
        parse(["runs/ntm", "--fm", "runs/fm", *argv])
    assert needle in capsys.readouterr().err
