"""Resume never discards work silently (issue 24, items 2 and 5): every checkpoint corrupt is
an error naming the folder and the quarantined files (``--restart`` begins again, keeping the
old files aside); a torn last line of ``metrics.jsonl`` is dropped with a warning; a damaged
``config.json`` is an error naming it.  In-process ``ntm train`` on a tiny toy run."""
import json

import pytest

from ntm_engine import checkpoint as ckpt
from ntm_engine import cli
from ntm_engine.training import read_metrics

from run_testutils import TINY_ARGS


def train(*argv):
    return cli.main(["train", *map(str, argv)])


def fail(capsys, *argv, command="train") -> str:
    """The one-line message of an ``ntm COMMAND`` that must fail with exit status 1."""
    with pytest.raises(SystemExit) as e:
        cli.main([command, *map(str, argv)])
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith(f"ntm {command}: error: "), msg
    return msg


@pytest.fixture
def run(tmp_path):
    """A finished 10-step toy run with checkpoints at steps 5 and 10."""
    out = tmp_path / "run"
    assert train("--dataset", "two_moons", *TINY_ARGS, "--iters", 10, "--ckpt-every", 5,
                 "--log-every", 5, "--no-plots", "--out", out) == 0
    return out


def resume(run, *more):
    return ("--out", run, "--resume", "--no-progress", "--no-plots", *more)


def corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def refused_then_restarted(capsys, folder, command, first, resume_argv, restart_argv):
    """With every checkpoint of ``folder`` (``first`` the step of its oldest) corrupt,
    ``ntm COMMAND *resume_argv`` stops naming the folder and the quarantined files, having
    trained and lost nothing; ``--resume --restart`` is refused; ``ntm COMMAND *restart_argv``
    begins again from step 0 with the old files kept aside."""
    steps = [s for s, _ in ckpt.list_checkpoints(folder)]
    assert steps and steps[0] == first
    for _, path in ckpt.list_checkpoints(folder):
        corrupt(path / ckpt.MODEL_FILE)
    metrics = (folder / "metrics.jsonl").read_text()
    msg = fail(capsys, *resume_argv, command=command)
    assert f"no checkpoint in {folder} is valid" in msg and "Nothing was trained" in msg
    assert all(f"corrupt-step_{s:08d}-" in msg for s in steps) and "--restart" in msg
    assert ckpt.list_checkpoints(folder) == []   # quarantined, not deleted:
    assert len(list((folder / "checkpoints").glob("corrupt-step_*"))) == len(steps)
    assert (folder / "metrics.jsonl").read_text() == metrics   # nothing trained, nothing lost
    with pytest.raises(SystemExit) as e:
        cli.main([command, *map(str, resume_argv), "--restart"])
    assert e.value.code == 2 and "give one" in capsys.readouterr().err

    assert cli.main([command, *map(str, restart_argv), "--restart"]) == 0
    assert [r["step"] for r in read_metrics(folder) if r["type"] == "event"][0] == 0
    kept = list(folder.glob("checkpoints-before-restart-*/corrupt-step_*"))
    assert len(kept) == len(steps) and list(folder.glob("metrics-before-restart-*.jsonl"))
    assert "--restart: moved" in capsys.readouterr().err


def test_all_checkpoints_corrupt_stops_resume_and_restart_begins_again(run, capsys):
    refused_then_restarted(capsys, run, "train", 5, resume(run, "--iters", 20),
                           ["--dataset", "two_moons", *TINY_ARGS, "--iters", 4, "--no-plots",
                            "--out", run])
    assert ckpt.load_latest(run).step == 4


def test_the_same_for_a_distillation(run, capsys):
    den = run / "denoiser"
    argv = [run, "--out", den, "--iters", 2, "--batch-size", 16, "--no-progress"]
    assert cli.main(["distill", *map(str, argv)]) == 0
    refused_then_restarted(capsys, den, "distill", 2, argv + ["--resume"], argv)
    assert ckpt.load_latest(den).step == 2


def test_a_run_with_checkpoints_names_restart(run, capsys):
    msg = fail(capsys, "--dataset", "two_moons", *TINY_ARGS, "--iters", 3, "--out", run)
    assert "already holds checkpoints (up to step 10)" in msg and "--restart" in msg


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(run, capsys):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "step": 11, "lo')   # killed mid-write
    lines = len((run / "metrics.jsonl").read_text().splitlines())
    capsys.readouterr()
    assert train(*resume(run, "--iters", 15)) == 0
    err = capsys.readouterr().err
    assert f"warning: {run / 'metrics.jsonl'}: dropped 1 unreadable line(s) (line {lines} " \
        f"of {lines};" in err
    text = (run / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in text]   # every line is a record again
    assert [r["step"] for r in recs if r["type"] == "train"] == [5, 10, 15]


@pytest.mark.parametrize("content,found", [
    ('{"dataset": "two_moons", "model": {', "found unreadable JSON (Expecting"),
    ('["two_moons"]', "found a JSON list"),
])
def test_a_damaged_config_json_is_named(run, capsys, content, found):
    (run / "config.json").write_text(content)
    msg = fail(capsys, *resume(run, "--iters", 15))
    assert f"{run / 'config.json'} is damaged: expected the run's configuration (a JSON " \
        f"object), {found}" in msg
    assert ckpt.load_latest(run).step == 10   # nothing trained or moved
