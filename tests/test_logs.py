"""The library reports through ``logging.getLogger("ntm_engine")``, never by printing; the ``ntm``
command line shows the same messages on stderr."""
import logging

from ntm_engine.logs import logger
from ntm_engine.training import Trainer

from run_testutils import tiny_cfg
from test_cli import run_cli


def test_a_run_in_python_logs_instead_of_printing(tmp_path, caplog, capsys):
    handlers = list(logger.handlers)
    for h in handlers:   # as in an application that imported ntm_engine: no handler of ours
        logger.removeHandler(h)
    propagate, logger.propagate = logger.propagate, True
    try:
        with caplog.at_level(logging.INFO, logger="ntm_engine"):
            Trainer(tiny_cfg(iters=3, ckpt_every=3), tmp_path / "run", device="cpu",
                    progress=False, plots=False).run()
    finally:
        logger.propagate = propagate
        for h in handlers:
            logger.addHandler(h)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    messages = [r.getMessage() for r in caplog.records if r.name == "ntm_engine"]
    assert any("step 3" in m for m in messages), messages


def test_the_command_line_writes_the_log_to_stderr(tmp_path, capsys):
    assert run_cli("train", "--dataset", "two_moons", "--width", 16, "--depth", 1, "--heads", 2,
                   "--transporter-layers", 1, "--transporter-hidden", 8, "--batch-size", 8,
                   "--iters", 2, "--no-plots", "--no-progress", "--out", tmp_path / "run") == 0
    err = capsys.readouterr().err
    assert "step 2" in err, err
