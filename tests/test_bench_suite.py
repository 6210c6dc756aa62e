"""The benchmark suite (bench/op_suite.py) stays runnable: a tiny CPU run of every op, and the
byte counts that GB/s and the copy_ ratio are computed from."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import op_suite  # noqa: E402


def test_bytes_moved_counts_every_tensor_and_the_per_sample_vector():
    t = op_suite.make_tensors(3, 10, torch.bfloat16, "cpu")
    per_op = {c.name: c.bytes_moved(t) for c in op_suite.op_cases()}
    n = 3 * 10 * 2                # bytes of one [3, 10] bfloat16 tensor
    ps = 3 * 4                    # the float32 per-sample vector
    assert per_op == {"affine_coupling": 4 * n + ps, "affine_coupling_inverse": 4 * n + ps,
                      "affine_coupling_backward": 7 * n + ps, "gaussian_nll": 3 * n + ps,
                      "gaussian_nll_backward": 6 * n + ps}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_and_twin_agree_on_the_benchmark_inputs(dtype):
    t = op_suite.make_tensors(4, 33, dtype, "cpu")
    for case in op_suite.op_cases():
        got, want = case.fused(t), case.twin(t)
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        assert len(got) == len(want), case.name
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-5, atol=1e-5, msg=case.name)


def test_tiny_suite_run_reports_every_op():
    emitted = []
    rows = op_suite.run_suite([(8, 64)], [torch.float32], "cpu", rounds=1, inner=1,
                              compile_twin=False, emit=emitted.append)
    assert rows == emitted
    assert [r[2] for r in rows] == [c.name for c in op_suite.op_cases()]
    for r in rows:
        assert len(r) == len(op_suite.HEADER)
        col = dict(zip(op_suite.HEADER, r))
        assert col["fused ms"] > 0 and col["fused GB/s"] > 0 and col["copy_/fused"] > 0
        assert col["compile/fused"] is None and col["compile ms"] is None


def test_suite_timings_are_written_as_pytest_benchmark_json(tmp_path):
    """The JSON next to a bench's table has pytest-benchmark's layout (what `pytest-benchmark
    compare` reads): one entry per (op, variant) with its raw rounds and stats."""
    import json

    import timing

    records = []
    op_suite.run_suite([(4, 32)], [torch.float32], "cpu", rounds=2, inner=1,
                       compile_twin=False, records=records)
    path = tmp_path / "run.json"
    timing.write_benchmark_json(str(path), records, source="bench/bench_ops.py", rounds=2,
                                warmup=2)
    doc = json.loads(path.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= set(doc)
    names = {b["name"] for b in doc["benchmarks"]}
    assert len(names) == len(records) == 3 * len(op_suite.op_cases())  # fused, eager, copy_
    for b in doc["benchmarks"]:
        assert b["fullname"] == "bench/bench_ops.py::" + b["name"]
        assert len(b["stats"]["data"]) == b["stats"]["rounds"] == 2
        assert b["stats"]["min"] <= b["stats"]["median"] <= b["stats"]["max"]
        assert b["extra_info"]["bytes"] > 0
