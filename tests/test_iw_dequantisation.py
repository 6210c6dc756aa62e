"""bench/iw_dequantisation.py stays runnable: both placements of the noise, the same at K = 1,
and bad arguments refused."""
import os
import sys

import pytest

from tests.run_testutils import tiny_cfg, trainer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import iw_dequantisation  # noqa: E402


def test_both_bounds_of_a_tiny_digits_run(tmp_path):
    out = tmp_path / "run"
    trainer(tiny_cfg("digits", True, iters=2, ckpt_every=2), out).run()
    res = iw_dequantisation.bounds(str(out), [1, 4], n=30)
    one, four = res["K"]["1"], res["K"]["4"]
    assert res["n"] == 30 and one["fixed"] == one["per_trajectory"]   # the same draws at K = 1
    assert four["fixed"] != four["per_trajectory"]
    assert all(v > 0 for v in (*one.values(), *four.values()))
    table = iw_dequantisation.markdown(res).splitlines()
    assert len(table) == 4 and table[3].startswith("| 4 |")


@pytest.mark.parametrize("k", ["0", "a,2"])
def test_bad_k_is_refused_naming_the_flag(k, capsys):
    with pytest.raises(SystemExit):
        iw_dequantisation.main(["unused", "--k", k])
    assert "--k" in capsys.readouterr().err


def test_refuses_a_flow_matching_run(tmp_path):
    out = tmp_path / "fm"
    trainer(tiny_cfg("digits", True, objective="flow_matching", iters=2, ckpt_every=2),
            out).run()
    with pytest.raises(SystemExit, match="not an NTM run"):
        iw_dequantisation.bounds(str(out), [1])
