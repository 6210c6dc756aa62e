"""``ntm compare`` as a subcommand of ``ntm`` and ``bench/compare_samplers.py``, on tiny runs
trained by the CLI (plumbing: the runs load through ``load_run``, older configs upgrade)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")

from ntm_engine import cli  # noqa: E402
from ntm_engine.compare import SCHEDULER_NAMES  # noqa: E402
from ntm_engine.compare.schedulers import SCHEDULERS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--dataset", "two_moons", "--width", "16", "--depth", "1", "--heads", "2",
        "--batch-size", "16", "--iters", "2", "--eval-every", "2", "--ckpt-every", "2",
        "--eval-samples", "0", "--no-progress", "--steps", "2"]


def test_scheduler_names_are_the_schedulers():
    assert tuple(SCHEDULERS) == SCHEDULER_NAMES


def test_the_ntm_parser_does_not_import_diffusers():
    code = ("import sys; from ntm_engine import cli; cli.build_parser(); "
            "print('diffusers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_runs")
    for name, extra in (("ntm", []), ("fm", ["--objective", "flow_matching"]),
                        ("abl", ["--transporter", "none"])):
        assert cli.main(["train", *TINY, *extra, "--out", str(root / name)]) == 0
    return root


def test_ntm_compare_subcommand_writes_the_report(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(runs / "ntm"), "--fm", str(runs / "fm"), "--ablation",
                     str(runs / "abl"), "--n", "8", "--steps", "1,2", "--schedulers",
                     "flow_euler", "--ablation-steps", "2", "--no-progress", "--device", "cpu",
                     "--out", str(out)]) == 0
    rows = json.loads((out / "quality_vs_steps.json").read_text())["rows"]
    assert sorted((r["sampler"], r["steps"]) for r in rows) == [
        ("flow_euler", 1), ("flow_euler", 2), ("ntm", 2), ("ntm_identity_transporter", 2)]
    assert (out / "quality_vs_steps.png").stat().st_size > 1000
    assert "| flow_euler | flow_matching | 1 |" in capsys.readouterr().out


def test_ntm_compare_rows_per_temperature(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(runs / "ntm"), "--fm", str(runs / "fm"), "--n", "8",
                     "--steps", "1", "--schedulers", "flow_euler", "--temperature", "1,0.7",
                     "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "quality_vs_steps.json").read_text())
    assert sorted(r["sampler"] for r in report["rows"]) == ["flow_euler", "ntm", "ntm@0.7"]
    assert report["meta"]["temperatures"] == [1.0, 0.7]
    with pytest.raises(SystemExit):
        cli.main(["compare", str(runs / "ntm"), "--fm", str(runs / "fm"), "--temperature",
                  "0.8,-1", "--out", str(tmp_path / "bad")])
    assert "--temperature: expected distinct comma-separated numbers >= 0, got '0.8,-1'" in \
        capsys.readouterr().err


def test_ntm_compare_refuses_a_flow_matching_run_as_the_ntm(runs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", str(runs / "fm"), "--fm", str(runs / "fm"), "--n", "4",
                  "--no-progress", "--out", str(tmp_path / "cmp")])
    assert "must be an NTM run" in capsys.readouterr().err


def test_bench_script_runs(runs, tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "bench/compare_samplers.py", str(runs / "ntm"), "--fm",
                        str(runs / "fm"), "--n", "4", "--steps", "1", "--schedulers", "unipc",
                        "--no-progress", "--device", "cpu", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (out / "quality_vs_steps.md").read_text().count("| unipc |") == 1
