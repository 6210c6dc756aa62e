"""The CPU kernels on several threads: the work is really split over torch's threads, small
shapes stay on one, and the results do not depend on the thread count -- bit for bit, per-sample
sums included -- and match the float64 twin.

Tolerances against the twin (float64): 1e-12 relative and absolute, elementwise and for the
per-sample sums (at most 3 x 70001 terms of magnitude <= ~2 here, summed in double).
"""
import contextlib

import pytest
import torch

from ntm_engine import ops
from ntm_engine import reference as R

from op_cases import SUPPORTED_CAPABILITIES, make_inputs, using_capability

CLAMP = 2.0
# many short rows (row length not a multiple of any vector width); few rows longer than a tile
# (16384 elements), so rows are split; one long row; rank 3
SHAPES = [(512, 1000), (3, 70001), (1, 300000), (64, 5, 201)]
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


@contextlib.contextmanager
def threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _inputs(shape, dtype, seed=0):
    x, b, logits = make_inputs(shape, dtype, seed=seed, scale=0.5)
    acc = R.accumulation_dtype(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    grad_y = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    grad_ps = torch.randn(shape[0], generator=g, dtype=torch.float64).to(acc)
    return x, b, logits, grad_y, grad_ps


def _all_ops(fns, x, b, logits, grad_y, grad_ps):
    """Every op's outputs, in one flat tuple: forward, inverse, backward, NLL, NLL backward."""
    return (*fns.affine_coupling(x, b, logits, CLAMP),
            *fns.affine_coupling_inverse(x, b, logits, CLAMP),
            *fns.affine_coupling_backward(x, b, logits, grad_y, grad_ps, CLAMP),
            fns.gaussian_nll(x, b, logits),
            *fns.gaussian_nll_backward(x, b, logits, grad_ps))


OP_CALLS = {
    "affine_coupling": lambda t: ops.affine_coupling(*t[:3], CLAMP),
    "affine_coupling_inverse": lambda t: ops.affine_coupling_inverse(*t[:3], CLAMP),
    "affine_coupling_backward": lambda t: ops.affine_coupling_backward(*t, CLAMP),
    "gaussian_nll": lambda t: ops.gaussian_nll(*t[:3]),
    "gaussian_nll_backward": lambda t: ops.gaussian_nll_backward(*t[:3], t[4]),
}


@pytest.mark.parametrize("op", OP_CALLS)
def test_every_op_splits_its_work_over_the_threads(op):
    """A control that fails when the kernels run on the calling thread only (as they did while
    at::parallel_for was compiled without OpenMP)."""
    t = _inputs((512, 1000), torch.float32)
    for n in (1, 2, 3):
        with threads(n):
            OP_CALLS[op](t)
            assert ops.last_cpu_parallel_chunks() == n, f"{op} at {n} threads"


@pytest.mark.parametrize("op", OP_CALLS)
def test_small_shapes_stay_on_one_thread(op):
    t = _inputs((8, 1000), torch.float32)  # 8000 elements: under one thread's share (32768)
    with threads(2):
        OP_CALLS[op](t)
        assert ops.last_cpu_parallel_chunks() == 1


@pytest.mark.parametrize("level", SUPPORTED_CAPABILITIES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_results_are_bitwise_equal_at_1_2_and_3_threads(shape, dtype, level):
    t = _inputs(shape, dtype, seed=3)
    with using_capability(level):
        with threads(1):
            one = _all_ops(ops, *t)
        for n in (2, 3):
            with threads(n):
                many = _all_ops(ops, *t)
            for i, (a, b) in enumerate(zip(one, many)):
                assert torch.equal(a, b), f"output {i} differs between 1 and {n} threads"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float64_at_2_threads_matches_twin(shape):
    t = _inputs(shape, torch.float64, seed=5)
    with threads(2):
        got = _all_ops(ops, *t)
    want = _all_ops(R, *t)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=f"output {i}")
