"""The ``ntm`` command line: smoke runs of train/sample/eval, SIGKILL and resume, corrupt
checkpoints, non-finite losses and configuration errors.  Tiny models; most runs in-process
(``cli.main``), the kill test and the module entry point in subprocesses."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ntm_engine import checkpoint as ckpt
from ntm_engine import cli, metrics
from ntm_engine.training import read_metrics
from tests.run_testutils import TINY_ARGS as TINY
from tests.run_testutils import assert_same_weights, sigkill_when

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fast_classifier(tmp_path_factory, monkeypatch):
    """A classifier cache private to these tests, trained briefly (plumbing, not quality)."""
    monkeypatch.setenv("NTM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ntm_cache"))
    original = metrics.train_classifier
    monkeypatch.setattr(metrics, "train_classifier",
                        lambda **kw: original(**dict(kw, epochs=3)))


def run_cli(*argv):
    return cli.main([str(a) for a in argv])


def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_steps(run):
    return [r["step"] for r in read_metrics(run) if r.get("type") == "train"]


# ----------------------------------------------------------------------------- entry points

def test_help_and_entry_points(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli("train", "--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--dataset", "--steps-T", "--class-conditional", "--resume", "--minutes",
                "--ckpt-every", "--max-nonfinite", "--device"):
        assert opt in out
    assert 'ntm = "ntm_engine.cli:main"' in (ROOT / "pyproject.toml").read_text()
    r = subprocess.run([sys.executable, "-m", "ntm_engine", "sample", "--help"], cwd=ROOT,
                       env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--guidance" in r.stdout


# ----------------------------------------------------------------------------- smoke runs

def test_toy_train_sample_eval(tmp_path, capsys):
    run = tmp_path / "moons"
    assert run_cli("train", "--dataset", "two_moons", *TINY, "--iters", 12, "--eval-every", 6,
                   "--ckpt-every", 6, "--log-every", 3, "--out", run) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 12 and summary["reason"] == "budget (iters)"
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [6, 12]
    for f in ("config.json", "metrics.jsonl", "samples.png", "curves.png",
              "samples/step_00000006.png", "samples/step_00000012.png"):
        assert (run / f).is_file(), f
    recs = read_metrics(run)
    assert train_steps(run) == [3, 6, 9, 12]
    evals = [r for r in recs if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [6, 12] and all(np.isfinite(r["test_bpd"]) for r in evals)
    train = [r for r in recs if r["type"] == "train"]
    assert {"loss", "train_bpd", "lr", "it_s", "grad_norm"} <= set(train[0])

    out_png = tmp_path / "s.png"
    assert run_cli("sample", run, "-n", 50, "--seed", 1, "--steps", 2, "--temperature", 0.8,
                   "--out", out_png, "--save-npy", "--save-pt") == 0
    text = capsys.readouterr().out
    assert "ms per sample" in text
    arr = np.load(tmp_path / "s.npy")
    assert arr.shape == (50, 2) and np.isfinite(arr).all()
    assert torch.load(tmp_path / "s.pt")["samples"].shape == (50, 2)
    assert out_png.stat().st_size > 1000

    assert run_cli("eval", run, "--n-samples", 200) == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["step"] == 12 and res["weights"] == "ema" and np.isfinite(res["test_bpd"])
    assert res["n_samples"] == 200 and np.isfinite(res["frechet_distance_raw"])


def test_digits_conditional_train_sample_eval(tmp_path, capsys):
    run = tmp_path / "digits"
    assert run_cli("train", "--class-conditional", *TINY, "--iters", 6, "--eval-every", 6,
                   "--eval-samples", 20, "--out", run) == 0
    assert (run / "samples.png").is_file()
    from PIL import Image
    img = Image.open(run / "samples.png")
    assert img.width >= 10 * 64 and img.height >= 2 * 64  # upscaled 8x8 digits, 10 per row

    png = tmp_path / "threes.png"
    assert run_cli("sample", run, "-n", 6, "--labels", "3,5", "--guidance", 1.5, "--out", png,
                   "--save-pt", "--no-ema") == 0
    saved = torch.load(tmp_path / "threes.pt")
    assert saved["samples"].shape == (6, 1, 8, 8)
    assert saved["labels"].tolist() == [3, 5, 3, 5, 3, 5]
    capsys.readouterr()

    # the digits' default trains 2, 4 and 8 steps; --steps all draws a grid at each
    assert json.loads((run / "config.json").read_text())["model"]["steps"] == [2, 4, 8]
    assert run_cli("sample", run, "-n", 4, "--steps", "all", "--out", tmp_path / "g.png",
                   "--save-npy") == 0
    grids = {T: np.load(tmp_path / f"g_{T}step.npy") for T in (2, 4, 8)}
    assert all((tmp_path / f"g_{T}step.png").is_file() for T in grids)
    assert not (tmp_path / "g.png").exists()
    assert run_cli("sample", run, "-n", 4, "--steps", "4", "--out", tmp_path / "four.png",
                   "--save-npy") == 0
    assert np.array_equal(np.load(tmp_path / "four.npy"), grids[4])
    assert " 8 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_cli("sample", run, "--steps", "al")

    out = tmp_path / "e.json"
    assert run_cli("eval", run, "--n-samples", 40, "--guidance", 1.0, "--out", out) == 0
    res = json.loads(out.read_text())
    for k in ("test_bpd", "class_accuracy", "frechet_distance", "frechet_distance_train_vs_test",
              "sample_ms_per_sample"):
        assert np.isfinite(res[k]), k
    assert 0 <= res["class_accuracy"] <= 1 and res["test_n"] > 300
    assert Path(res["classifier"]["path"]).is_file()
    assert "class_accuracy" in capsys.readouterr().out


# ----------------------------------------------------------------------------- faults

def _past_first_checkpoint(run: Path, steps: int) -> bool:
    """The run has a complete first checkpoint and has trained ``steps`` more iterations."""
    done = ckpt.list_checkpoints(run)
    return bool(done) and (done[0][1] / ckpt.MANIFEST_FILE).exists() and \
        max(train_steps(run) or [0]) >= done[0][0] + steps


def test_sigkill_then_resume_continues_the_run(tmp_path):
    run = tmp_path / "killed"
    args = ["train", "--dataset", "two_moons", *TINY, "--iters", "60", "--ckpt-every", "10",
            "--log-every", "5", "--eval-every", "1000", "--no-plots", "--out", str(run)]
    proc = subprocess.Popen([sys.executable, "-m", "ntm_engine", *args, "--threads", "1",
                             "--throttle", "0.03"], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sigkill_when(proc, lambda: _past_first_checkpoint(run, 5), timeout=120)
    killed_at = max(train_steps(run))
    last_ckpt = ckpt.load_latest(run).step
    assert 10 <= last_ckpt < killed_at < 60

    assert run_cli("train", "--out", run, "--resume", "--no-progress", "--no-plots") == 0
    assert ckpt.load_latest(run).step == 60
    assert train_steps(run) == list(range(5, 61, 5))  # the curve continues, no duplicates
    events = [(r["event"], r["step"]) for r in read_metrics(run) if r["type"] == "event"]
    assert events[0] == ("start", 0) and ("resume", last_ckpt) in events
    assert events[-1] == ("end", 60)

    # the killed + resumed run equals an uninterrupted one
    ref = tmp_path / "ref"
    assert run_cli(*[str(a) for a in args[:-1]], ref) == 0
    la = {r["step"]: r["loss"] for r in read_metrics(run) if r["type"] == "train"}
    lb = {r["step"]: r["loss"] for r in read_metrics(ref) if r["type"] == "train"}
    assert la.keys() == lb.keys()
    for s in la:
        assert la[s] == lb[s], s   # same machine, same thread count: bit for bit
    assert_same_weights(run, ref)


def test_corrupt_latest_checkpoint_is_refused_by_every_command(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("train", "--dataset", "eight_gaussians", *TINY, "--iters", 10, "--ckpt-every",
                   5, "--no-plots", "--out", run) == 0
    f = run / "checkpoints" / "step_00000010" / "ema.safetensors"
    f.write_bytes(f.read_bytes()[:-7])  # truncated
    capsys.readouterr()
    assert run_cli("sample", run, "-n", 10, "--out", tmp_path / "x.png") == 0
    io = capsys.readouterr()
    assert "refusing" in io.err and "step_00000010" in io.err and "truncated" in io.err
    assert "(step 5," in io.out
    assert run_cli("eval", run, "--n-samples", 20) == 0
    assert json.loads((run / "eval.json").read_text())["step"] == 5
    with pytest.raises(SystemExit, match="truncated"):
        run_cli("sample", run / "checkpoints" / "step_00000010")  # named explicitly: refused
    assert run_cli("train", "--out", run, "--resume", "--iters", 15, "--no-plots") == 0
    assert ckpt.load_latest(run).step == 15
    assert "resumed from" in capsys.readouterr().err


def test_nonfinite_losses_stop_the_run_with_a_message(tmp_path, capsys):
    run = tmp_path / "nan"
    with pytest.raises(SystemExit) as e:
        run_cli("train", "--dataset", "two_moons", *TINY, "--iters", 30, "--ckpt-every", 4,
                "--max-nonfinite", 3, "--fault-nonfinite-at", "2,6,7,8,9,10", "--out", run)
    msg = str(e.value.code)
    assert "3 consecutive non-finite losses" in msg and "step_00000004" in msg
    assert ckpt.load_latest(run).step == 4
    err = capsys.readouterr().err
    assert "step 2: non-finite loss" in err and "step skipped" in err


# ----------------------------------------------------------------------------- config errors

@pytest.mark.parametrize("argv,code,match", [
    (["--dataset", "mnist"], 2, "unknown dataset 'mnist'"),
    (["--steps-T", "0"], 2, "--steps-T"),
    (["--lr", "-0.001"], 2, "--lr must be > 0"),
    (["--dataset", "two_moons", "--class-conditional"], None, "labelled data"),
    (["--patch-size", "3"], None, "patch-size 3 must divide"),
    (["--width", "30", "--heads", "4"], None, "divisible"),
    (["--t-min-max", "0.5"], None, "invalid model configuration"),
    (["--iters", "0"], None, "--iters must be >= 1"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "bogus"],
     None, "--device"),
])
def test_config_errors_are_reported_before_any_work(tmp_path, capsys, argv, code, match):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        run_cli("train", *argv, "--iters", 5, "--out", out) if "--iters" not in argv else \
            run_cli("train", *argv, "--out", out)
    if code is not None:
        assert e.value.code == code
        assert match in capsys.readouterr().err
    else:
        assert match in str(e.value.code)
    assert not out.exists()


def test_resume_refuses_another_model_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("train", "--dataset", "two_moons", *TINY, "--iters", 3, "--no-plots",
                   "--out", run) == 0
    with pytest.raises(SystemExit, match=r"another configuration:\n  model.width: checkpoint 32"):
        run_cli("train", "--out", run, "--resume", "--width", "64")
    with pytest.raises(SystemExit, match="dataset: checkpoint 'two_moons'"):
        run_cli("train", "--out", run, "--resume", "--dataset", "checkerboard")
    with pytest.raises(SystemExit, match="already holds checkpoints"):
        run_cli("train", "--dataset", "two_moons", *TINY, "--iters", 3, "--out", run)
    with pytest.raises(SystemExit, match="--labels given but the model is unconditional"):
        run_cli("sample", run, "--labels", "3")
    with pytest.raises(SystemExit, match="no such checkpoint"):
        run_cli("eval", tmp_path / "missing")


def test_a_long_cpu_job_is_warned_when_other_processes_hold_its_cores(monkeypatch, capsys):
    from ntm_engine import logs
    from ntm_engine.cli.common import busy_cores_note, note_busy_cores
    assert busy_cores_note(2, 2, 0.3) is None                  # idle machine
    assert busy_cores_note(1, 2, 1.9) is None                  # one thread finds a core
    assert busy_cores_note(4, 8, 3.0) is None                  # 5 free for 4
    note = busy_cores_note(2, 2, 1.0)
    assert note.startswith("warning: load average 1.0 on 2 cores leaves about 1 free for 2 "
                           "threads") and note.endswith("--threads 1 may be faster")
    assert "about 1 free" in busy_cores_note(8, 4, 6.5)         # never fewer than one
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)   # whatever this machine has
    logs.cli_handler()                                        # the log on stderr, as `ntm` has it
    note_busy_cores(torch.device("meta"))                     # not a CPU job: quiet
    assert capsys.readouterr().err == ""
    note_busy_cores(torch.device("cpu"))
    err = capsys.readouterr().err
    assert "load average 64.0" in err and "for 2 threads" in err, err


def test_a_bad_dataset_stays_the_only_line_on_a_busy_machine(tmp_path, monkeypatch, capsys):
    """The busy-cores note comes after the input checks: an error is still the one line."""
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    with pytest.raises(SystemExit):
        cli.main(["train", "--dataset", str(tmp_path / "missing"), *TINY, "--iters", "1",
                  "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert err.startswith("ntm train: error: --dataset") and err.count("\n") == 1, err
