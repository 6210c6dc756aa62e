"""CPU kernel dispatch, strided inputs, the backward's optional outputs and edge values.

Every CPU capability this machine supports is checked against the float64 twin (here and, via
the ``cpu_capability`` fixture, in test_ops_accuracy.py); levels the CPU lacks are skipped.
"""
import pytest
import torch

import ntm_engine
from ntm_engine import ops
from ntm_engine import reference as R

from op_cases import (LOW_PRECISION, SUPPORTED_CAPABILITIES,
                      assert_lean_backward_writes_only_the_rest, assert_within_twice_twin,
                      make_inputs, using_capability)

ALL_LEVELS = ("default", "avx2", "avx512")


def test_build_info_lists_compiled_supported_and_chosen_levels():
    info = ntm_engine.build_info()
    compiled, supported = info["cpu_capabilities_compiled"], info["cpu_capabilities_supported"]
    assert "default" in compiled and set(supported) <= set(compiled) <= set(ALL_LEVELS)
    assert info["cpu_capability"] in supported
    assert info["vector_width_float32"] == (16 if info["cpu_capability"] == "avx512" else 8)


def test_set_cpu_capability_switches_and_reports():
    before = ntm_engine.build_info()["cpu_capability"]
    try:
        for level in SUPPORTED_CAPABILITIES:
            ops.set_cpu_capability(level.upper())
            assert ntm_engine.build_info()["cpu_capability"] == level
    finally:
        ops.set_cpu_capability(before)


def test_set_cpu_capability_rejects_unknown_and_unsupported_levels():
    with pytest.raises(ValueError, match=r"must be one of 'default', 'avx2', 'avx512', got 'sse9'"):
        ops.set_cpu_capability("sse9")
    with pytest.raises(TypeError, match=r"argument 'name' must be a str, got int"):
        ops.set_cpu_capability(2)
    unsupported = [lv for lv in ALL_LEVELS if lv not in SUPPORTED_CAPABILITIES]
    for level in unsupported:
        with pytest.raises(ValueError, match=rf"'{level}' is not (supported by this CPU|compiled)"):
            ops.set_cpu_capability(level)


@pytest.mark.parametrize("level", SUPPORTED_CAPABILITIES)
def test_levels_agree_with_each_other_within_rounding(level):
    """The levels differ only in vector width and exp/tanh routines: results agree to float
    rounding (sums may group differently)."""
    x, shift, logits = make_inputs((5, 1000), torch.float32, seed=11)
    with using_capability("default"):
        want = ops.affine_coupling(x, shift, logits, 2.0)
    with using_capability(level):
        got = ops.affine_coupling(x, shift, logits, 2.0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=4e-6, atol=4e-6)


# ----------------------------------------------------------------------------- strided inputs


def _copies_made(fn):
    """(inputs the ops copied by their own count, ATen copy ops the profiler saw) in fn()."""
    ops.reset_input_copy_count()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.name for e in prof.events()}
    return ops.input_copy_count(), names & {"aten::contiguous", "aten::clone", "aten::copy_"}


def _every_op(grad_ps):
    """Each op as f(a, b, c) -> tuple of its outputs (b, c: shift/mean, logits/log-sigma)."""
    return {
        "forward": lambda a, b, c: ops.affine_coupling(a, b, c, 2.0),
        "inverse": lambda a, b, c: ops.affine_coupling_inverse(a, b, c, 2.0),
        "backward": lambda a, b, c: ops.affine_coupling_backward(a, b, c, b, grad_ps, 2.0)[:2],
        "nll": lambda a, b, c: (ops.gaussian_nll(a, b, c),),
        "nll_backward": lambda a, b, c: ops.gaussian_nll_backward(a, b, c, grad_ps),
    }


@pytest.mark.parametrize("dtype", (torch.float64,) + LOW_PRECISION, ids=str)
def test_column_views_are_read_in_place_and_match_copies(dtype):
    base = make_inputs((6, 3 * 301), dtype, seed=12)
    views = [t[:, 301:602] for t in base]       # row stride 903, inner dim contiguous
    copies = [v.contiguous() for v in views]
    grad_ld = torch.randn(6, dtype=R.accumulation_dtype(dtype))
    for name, call in _every_op(grad_ld).items():
        assert _copies_made(lambda: call(*views)) == (0, set()), name
        for got, want in zip(call(*views), call(*copies)):
            assert torch.equal(got, want), name


# name: (a strided tensor, whether the ops read it in place).  In place: row r of the [B, ...]
# tensor is one contiguous block at r * stride(0); otherwise its rows are scattered.
LAYOUTS = {
    "t[:, 512:1536] of [B, 2048]": (lambda: torch.randn(5, 2048)[:, 512:1536], True),
    "channel slice [:, 1:3] of [B, 4, L]": (lambda: torch.randn(5, 4, 33)[:, 1:3], True),
    "batch-expanded row": (lambda: torch.randn(1, 97).expand(5, 97), True),
    "transposed": (lambda: torch.randn(97, 5).t(), False),
    "every other column": (lambda: torch.randn(5, 194)[:, ::2], False),
    "last-dim slice [:, :, :16] of [B, 4, L]": (lambda: torch.randn(5, 4, 33)[:, :, :16], False),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inputs_are_copied_only_when_rows_are_scattered(layout):
    """ops.input_copy_count() stays put for layouts with contiguous rows and moves by one per
    scattered input otherwise; results equal the contiguous run bit for bit either way."""
    make, in_place = LAYOUTS[layout]
    torch.manual_seed(15)
    x = make()
    assert not x.is_contiguous()
    b, c = torch.randn(x.shape), 0.5 * torch.randn(x.shape)
    for name, call in _every_op(torch.randn(x.shape[0])).items():
        copies, _ = _copies_made(lambda: call(x, b, c))
        assert copies == (0 if in_place else 1), f"{name}: {copies} copies"
        for got, want in zip(call(x, b, c), call(x.contiguous(), b, c)):
            assert torch.equal(got, want), name


def test_batch_expanded_inputs_are_read_in_place():
    x = make_inputs((4, 257), torch.float32, seed=13)[0]
    shift = torch.randn(1, 257).expand(4, 257)          # row stride 0
    logits = torch.randn(1, 257).expand(4, 257)
    assert _copies_made(lambda: ops.affine_coupling(x, shift, logits, 1.5)) == (0, set())
    got = ops.affine_coupling(x, shift, logits, 1.5)
    want = ops.affine_coupling(x, shift.contiguous(), logits.contiguous(), 1.5)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_layouts_without_contiguous_rows_are_copied():
    """The positive control of both copy detectors: a transposed input must be copied."""
    x = make_inputs((64, 5), torch.float32)[0].t()      # [5, 64], inner stride 5
    shift, logits = torch.zeros(5, 64), torch.zeros(5, 64)
    copies, seen = _copies_made(lambda: ops.affine_coupling(x, shift, logits))
    assert copies == 1 and seen
    torch.testing.assert_close(ops.affine_coupling(x, shift, logits)[0], x)


# ----------------------------------------------------------------------------- backward outputs


@pytest.mark.parametrize("clamp", (None, 2.0))
def test_backward_without_x_and_grad_shift_writes_only_the_rest(clamp):
    y, shift, logits = make_inputs((5, 301), torch.float64, seed=14)
    g = torch.randn_like(y)
    gld = torch.randn(5, dtype=torch.float64)
    assert_lean_backward_writes_only_the_rest(y, shift, logits, g, gld, clamp)
    x, gx, gb, gl = ops.affine_coupling_backward(y, shift, logits, g, gld, clamp, need_x=False)
    assert x is None and gb is g
    twin = R.affine_coupling_backward(y, shift, logits, g, gld, clamp)
    torch.testing.assert_close(gx, twin[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gl, twin[3], rtol=1e-12, atol=1e-12)


def test_autograd_backward_returns_grad_y_as_grad_shift():
    x, shift, logits = (t.requires_grad_() for t in make_inputs((3, 40), torch.float64, seed=15))
    y, ld = ops.affine_coupling(x, shift, logits, 2.0)
    gy = torch.randn_like(y)
    gx, gb, gl = torch.autograd.grad((y, ld), (x, shift, logits), (gy, torch.ones(3).double()))
    torch.testing.assert_close(gb, gy)
    ref = R.affine_coupling_backward(y.detach(), shift.detach(), logits.detach(), gy,
                                     torch.ones(3).double(), 2.0)
    torch.testing.assert_close(gx, ref[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gl, ref[3], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- edge values


@pytest.mark.parametrize("level", SUPPORTED_CAPABILITIES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
def test_reduced_precision_stores_round_like_torch_bit_for_bit(level, dtype):
    """With scale_logits = 0 the forward is y = x * 1 + shift: one float32 add of two exact
    values, so y shows the kernel's store conversion alone.  Over random bit patterns (ties,
    subnormals, overflow to inf, inf and NaN inputs) it must round as torch's own conversion
    does, bit for bit; NaN stays NaN (its payload may differ).  1000 columns: the vector path
    and the partial last vector."""
    g = torch.Generator().manual_seed(17)
    x, shift = (torch.randint(-2**15, 2**15, (64, 1000), generator=g, dtype=torch.int32)
                .to(torch.int16).view(dtype) for _ in range(2))
    want = (x.float() + shift.float()).to(dtype)
    with using_capability(level):
        got = ops.affine_coupling(x, shift, torch.zeros_like(x))[0]
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))



@pytest.mark.parametrize("level", SUPPORTED_CAPABILITIES)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("clamp", (1e-38, 1e-30, 1e-6))
def test_tiny_clamp_gives_no_nan(level, dtype, clamp):
    x, shift, logits = make_inputs((3, 37), dtype, seed=16, scale=50.0)
    logits[0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e30]).to(dtype)
    with using_capability(level):
        outs = (ops.affine_coupling(x, shift, logits, clamp)
                + ops.affine_coupling_inverse(x, shift, logits, clamp)
                + ops.affine_coupling_backward(x, shift, logits, x, torch.ones(3), clamp))
    for out in outs:
        assert not torch.isnan(out).any(), (level, dtype, clamp)
    if clamp < 1e-20:  # |s| <= clamp rounds exp(s) to 1: y = x + shift in acc, rounded
        acc = R.accumulation_dtype(dtype)
        assert torch.equal(outs[0], (x.to(acc) + shift.to(acc)).to(dtype))


def _mem_available_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


@pytest.mark.skipif(_mem_available_gib() < 12, reason="needs ~5 GiB free for a 2^31-element output")
def test_more_than_2_to_the_31_elements():
    """Indices past int32: batch-expanded inputs (no memory) and a 4 GiB bfloat16 output."""
    n = 2**16
    rows = 2**31 // n + 1
    x, shift, logits = (t[:1].expand(rows, n) for t in make_inputs((1, n), torch.bfloat16, seed=17))
    y, ld = ops.affine_coupling(x, shift, logits, 2.0)
    assert y.numel() > 2**31
    want_y, want_ld = ops.affine_coupling(x[:1].contiguous(), shift[:1].contiguous(),
                                          logits[:1].contiguous(), 2.0)
    assert torch.equal(y[-1], want_y[0]) and torch.equal(y[rows // 2], want_y[0])
    assert torch.equal(ld, want_ld.expand(rows))


# ----------------------------------------------------------------------------- mixed devices


def test_mixed_devices_fail_with_the_kernels_message_whichever_backend_is_picked():
    """CPU + meta picks the meta (fake) kernel; its message is the CPU/CUDA kernels' one
    (test_cuda_ops.py::test_device_mismatch_raises_a_clear_error checks CPU + CUDA)."""
    x = torch.randn(3, 8)
    m = torch.randn(3, 8, device="meta")
    with pytest.raises(ValueError, match=r"'shift' must be on the device of 'x' \(cpu\), got meta"):
        ops.affine_coupling(x, m, x)
    with pytest.raises(ValueError, match=r"'shift' must be on the device of 'x' \(meta\), got cpu"):
        ops.affine_coupling(m, x, m)
    with pytest.raises(ValueError, match=r"'grad_logdet' must be on the device of 'y' \(cpu\)"):
        ops.affine_coupling_backward(x, x, x, x, torch.zeros(3, device="meta"))
    with pytest.raises(ValueError, match=r"'grad' must be on the device of 'u' \(meta\)"):
        ops.gaussian_nll_backward(m, m, m, torch.ones(3))
    # the CPU kernel's own check says the same
    with pytest.raises(ValueError, match=r"'shift' must be on the device of 'x' \(cpu\), got meta"):
        torch.ops.ntm.affine_coupling.default.redispatch(
            torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), x, m, x, None)
