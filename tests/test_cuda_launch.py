"""CUDA launch shapes and layouts: few long rows split to fill the GPU (few medium rows get a
block each), row-strided inputs read in place, misaligned rows across chunks, graph capture on a
side stream, tiny clamps, more than 2^31 elements, and the backward's optional outputs.  Needs a
GPU (marker ``cuda``)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from ntm_engine import ops
from ntm_engine import reference as R

from op_cases import assert_lean_backward_writes_only_the_rest
from test_cuda_ops import (OPS, PER_SAMPLE, check_against_cpu, check_against_truth, make_args,
                           move, row_abs_sums, run, upcast)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


# The CPU emulator's prediction (tests/cpp/predict_sum_order.cpp) of which per-sample sums are
# bitwise equal between two launches: where the addition orders match.
_SUM_ORDER = os.path.join(os.path.dirname(__file__), "fixtures", "cuda_sum_order.json")


def predicted_equal_rows(case):
    """Rows whose per-sample sums are bitwise equal between the two launches of `case` on this
    GPU's SM count, as the emulator predicts (the tests assert exactly that and no more)."""
    with open(_SUM_ORDER) as f:
        per_sms = json.load(f)["cases"][case]
    sms = str(torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count)
    if sms not in per_sms:
        pytest.fail(f"{_SUM_ORDER} has no prediction for {sms} SMs: add {sms} to kSmCounts in "
                    "tests/cpp/predict_sum_order.cpp and regenerate the file")
    return per_sms[sms]


def assert_sums_as_predicted(case, got, want, abs_sums):
    """Equal bits on the predicted rows; elsewhere two summation orders of the same terms, each
    within a few accumulation-dtype ulps of sum |term| of the exact sum."""
    equal_rows = predicted_equal_rows(case)
    assert got.shape == want.shape and got.dtype == want.dtype, case
    for r in equal_rows:
        assert torch.equal(got[r], want[r]), f"{case}: row {r} predicted bitwise equal"
    bound = 2 * 16 * torch.finfo(torch.float32).eps * abs_sums.reshape(-1).to(got.device)
    diff = (got.double() - want.double()).abs()
    assert bool((diff <= bound).all()), f"{case}: max diff {diff.max().item():.3g}"


def _abs_sums(op, args):
    return row_abs_sums(op, upcast(args)) if op in PER_SAMPLE else None


def _check(op, dtype, got, cpu_args):
    args = move(cpu_args, "cuda")
    check_against_cpu(op, dtype, got, run(ops, op, cpu_args), _abs_sums(op, args))
    check_against_truth(op, dtype, got, run(R, op, args), run(R, op, upcast(args)),
                        _abs_sums(op, args))


# (3, 1000), (40, 259), (7, 520): rows short enough for one segment each but too few to fill
# the GPU, so each row gets a group of warps, a block of its own; (3, 100): a sub-warp group.
@pytest.mark.parametrize("shape", [(64, 12288), (2, 300_001), (1, 70_000), (3, 1000),
                                   (40, 259), (7, 520), (3, 100)])
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("op", OPS)
def test_few_long_rows_split_across_the_grid(op, dtype, shape):
    cpu_args = make_args(op, shape, dtype, seed=21)
    got = run(ops, op, move(cpu_args, "cuda"))
    _check(op, dtype, got, cpu_args)
    again = run(ops, op, move(cpu_args, "cuda"))
    for a, b in zip(got, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("n", [100_003, 40_001, 16_385])
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=str)
@pytest.mark.parametrize("op", OPS)
def test_misaligned_rows_over_several_chunks(op, dtype, n):
    """n * element size is not a multiple of 16: every output row after the first starts off a
    16-byte boundary, inside a multi-chunk row (the per-row scalar head must line up)."""
    cpu_args = make_args(op, (5, n), dtype, seed=n)
    _check(op, dtype, run(ops, op, move(cpu_args, "cuda")), cpu_args)


def _column_view(t, offset, pad):
    buf = torch.zeros(t.shape[0], t.shape[1] + pad, dtype=t.dtype, device=t.device)
    view = buf[:, offset:offset + t.shape[1]]
    view.copy_(t)
    return view


def _copies(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.name for e in prof.events()} & {"aten::contiguous", "aten::clone", "aten::copy_"}


# offset 0 and pad 64 (every row on the same 16-byte phase: vector path), offset 1 (rows out
# of phase with the outputs: scalar path, or, with no output, vectors after another head)
@pytest.mark.parametrize("offset,pad", [(0, 64), (8, 64), (1, 7)])
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("op", OPS)
def test_column_views_are_read_in_place(op, dtype, offset, pad):
    cpu_args = make_args(op, (6, 20_001), dtype, seed=22)
    if op == "affine_coupling_backward":  # per-sample input in the accumulation dtype
        cpu_args = cpu_args[:4] + (cpu_args[4].to(R.accumulation_dtype(dtype)),) + cpu_args[5:]
    args = move(cpu_args, "cuda")
    views = tuple(_column_view(a, offset, pad) if isinstance(a, torch.Tensor) and a.dim() == 2
                  else a for a in args)
    assert all(a.data_ptr() % 16 == 0 for a in args if isinstance(a, torch.Tensor))
    assert not _copies(lambda: run(ops, op, views))
    per_sample = PER_SAMPLE.get(op, ())
    for i, (g, w) in enumerate(zip(run(ops, op, views), run(ops, op, args))):
        if i in per_sample:
            assert_sums_as_predicted(f"column_views/{offset},{pad}/{str(dtype)[6:]}/{op}", g, w,
                                     _abs_sums(op, args))
        else:
            assert torch.equal(g, w), f"{op} output {i}"


def test_graph_capture_on_a_side_stream():
    x, shift, logits, _ = make_args("affine_coupling", (8, 5000), torch.float32, device="cuda")
    mean, log_sigma = make_args("gaussian_nll", (8, 5000), torch.float32, seed=3,
                                device="cuda")[:2]
    gy = torch.randn_like(x)

    def step():
        y, ld = ops.affine_coupling(x, shift, logits, 2.0)
        nll = ops.gaussian_nll(y, mean, log_sigma)
        _, gx, _, gl = ops.affine_coupling_backward(y, shift, logits, gy, ld, 2.0, need_x=False)
        return y, nll - ld, gx, gl

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        static_out = step()
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(static_out, step()):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("clamp", (1e-38, 1e-30))
def test_tiny_clamp_gives_no_nan(dtype, clamp):
    x, shift, logits = (t.to(dtype).cuda() for t in
                        (torch.randn(3, 4099), torch.randn(3, 4099), 50 * torch.randn(3, 4099)))
    logits[0, :3] = torch.tensor([0.0, 1e-30, -1e30], dtype=dtype)
    outs = (ops.affine_coupling(x, shift, logits, clamp)
            + ops.affine_coupling_inverse(x, shift, logits, clamp)
            + ops.affine_coupling_backward(x, shift, logits, x, torch.ones(3, device="cuda"),
                                           clamp))
    for out in outs:
        assert not torch.isnan(out).any()
    acc = R.accumulation_dtype(dtype)  # exp(s) rounds to 1: y = x + shift in acc, rounded
    assert torch.equal(outs[0], (x.to(acc) + shift.to(acc)).to(dtype))


def test_more_than_2_to_the_31_elements():
    n = 2**16
    rows = 2**31 // n + 3
    x, shift, logits = (t[:1].expand(rows, n) for t in
                        make_args("affine_coupling", (1, n), torch.bfloat16, device="cuda")[:3])
    y, ld = ops.affine_coupling(x, shift, logits, 1.5)
    nll = ops.gaussian_nll(y, shift, logits)
    assert y.numel() > 2**31
    y0, ld0 = ops.affine_coupling(x[:1].contiguous(), shift[:1].contiguous(),
                                  logits[:1].contiguous(), 1.5)
    assert torch.equal(y[-1], y0[0]) and torch.equal(y[rows // 2], y0[0])
    for r in predicted_equal_rows("expanded_rows/bfloat16/affine_coupling_vs_first_row"):
        assert torch.equal(ld[r], ld[0]), f"logdet row {r}"
    for r in predicted_equal_rows("expanded_rows/bfloat16/gaussian_nll_vs_first_row"):
        assert torch.equal(nll[r], nll[0]), f"nll row {r}"
    abs_sums = R.soft_clamp(logits[:1].double(), 1.5).abs().sum(dim=1)
    assert_sums_as_predicted("expanded_rows/bfloat16/affine_coupling_vs_one_row", ld,
                             ld0.expand(rows), abs_sums.expand(rows))
    del y, nll
    torch.cuda.empty_cache()


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_backward_writes_only_what_is_asked(dtype):
    y, shift, logits, g, gld, clamp = make_args("affine_coupling_backward", (4, 30_000), dtype,
                                                device="cuda")
    assert_lean_backward_writes_only_the_rest(y, shift, logits, g, gld, clamp)
