"""bench/step_attribution.py stays runnable: balanced class subsets, and a table with a column
per sampled step count, whose last column is a plain sample."""
import math
import os
import sys

import pytest
import torch

from tests.run_testutils import tiny_cfg, trainer
from test_cli import fast_classifier  # noqa: F401  (an autouse fixture)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import step_attribution  # noqa: E402


def test_balanced_takes_as_many_of_each_class_in_order():
    y = torch.tensor([0, 1, 1, 2, 0, 1, 2, 2, 0, 1])
    x = torch.arange(10).float().view(10, 1)
    xb, yb = step_attribution.balanced(x, y, 100)
    assert torch.bincount(yb).tolist() == [3, 3, 3]        # class sizes 3, 4, 3
    assert xb.view(-1).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]   # the first of each, in order
    xb, yb = step_attribution.balanced(x, y, 6)
    assert torch.bincount(yb).tolist() == [2, 2, 2]
    xb, yb = step_attribution.balanced(x, None, 4)
    assert yb is None and xb.view(-1).tolist() == [0, 1, 2, 3]


def test_attribution_of_a_tiny_digits_run(tmp_path):
    out = tmp_path / "run"
    trainer(tiny_cfg("digits", True, iters=2, ckpt_every=2, model=dict(steps=[2, 3])), out).run()
    res = step_attribution.attribution(str(out), seeds=1, n=40)
    assert res["n"] == 40 and math.isfinite(res["real_train_images"])
    assert list(res["steps"]) == ["2", "3"]
    assert list(res["steps"]["3"]) == ["1", "2", "3"]
    assert all(math.isfinite(v) for row in res["steps"].values() for v in row.values())
    table = step_attribution.markdown(res).splitlines()
    assert len(table) == 4 and table[2].startswith("| 2 |") and table[3].count("|") == 6


def test_refuses_a_flow_matching_run(tmp_path):
    out = tmp_path / "fm"
    trainer(tiny_cfg("digits", True, objective="flow_matching", iters=2, ckpt_every=2),
            out).run()
    with pytest.raises(SystemExit, match="flow_matching run, not an NTM"):
        step_attribution.attribution(str(out), seeds=1, n=10)
