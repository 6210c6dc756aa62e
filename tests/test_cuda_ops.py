"""The CUDA kernels of the five ntm ops against the CPU kernels and the float64 twins.

Every test here needs a GPU (marker ``cuda``; skipped cleanly without one).  Rules:

* float64: within ~1e-12 relative of the twin evaluated in float64.
* float32 / bfloat16 / float16: the flash-attention rule -- the kernel's error against the
  float64 twin (on the same rounded inputs) is at most twice the error of the twin itself run
  in that dtype on the GPU, plus a floor of a few ulps.  Per-sample sums get a floor at the
  scale of a good summation's error bound, eps * sum |terms|; that every element is summed
  exactly once is checked separately, on integer data whose sums are exact.
"""
from __future__ import annotations

import pytest
import torch

from ntm_engine import ops
from ntm_engine import reference as R

from op_cases import assert_compiled_matches_eager

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

OPS = ("affine_coupling", "affine_coupling_inverse", "affine_coupling_backward",
       "gaussian_nll", "gaussian_nll_backward")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
LOW = (torch.float32, torch.bfloat16, torch.float16)
ROW_LENGTHS = (1, 3, 7, 1023, 4097)
LONG_ROW = 5_000_003          # > 300 chunks of the long-row path; odd, so a scalar tail
PER_SAMPLE = {"affine_coupling": (1,), "affine_coupling_inverse": (1,), "gaussian_nll": (0,)}
CLAMP = 1.5


# ----------------------------------------------------------------------------- helpers


def make_args(op, shape, dtype, seed=0, clamp=CLAMP, grad_logdet=True, device="cpu"):
    """Arguments of `op` (per-element in `dtype`, per-sample in float32), built on the CPU
    from one seed so that CPU and CUDA runs see the same values."""
    g = torch.Generator().manual_seed(seed)

    def rnd(s=shape, scale=1.0):
        return (scale * torch.randn(s, generator=g, dtype=torch.float64))

    B = shape[0]
    if op in ("affine_coupling", "affine_coupling_inverse"):
        args = (rnd().to(dtype), rnd().to(dtype), rnd(scale=0.7).to(dtype), clamp)
    elif op == "affine_coupling_backward":
        gld = rnd((B,)).float() if grad_logdet else None
        args = (rnd().to(dtype), rnd().to(dtype), rnd(scale=0.7).to(dtype), rnd().to(dtype),
                gld, clamp)
    elif op == "gaussian_nll":
        args = (rnd().to(dtype), rnd().to(dtype), rnd(scale=0.5).to(dtype))
    else:
        args = (rnd().to(dtype), rnd().to(dtype), rnd(scale=0.5).to(dtype), rnd((B,)).float())
    return move(args, device)


def move(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def upcast(args):
    return tuple(a.double() if isinstance(a, torch.Tensor) else a for a in args)


def run(fn_module, op, args):
    out = getattr(fn_module, op)(*args)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def row_abs_sums(op, args64):
    """sum over each row of |term| (float64, [B]): the scale of a per-sample sum's error."""
    B = args64[0].shape[0]
    if op in ("affine_coupling", "affine_coupling_inverse"):
        terms = R.soft_clamp(args64[2], args64[3]).abs()
    else:
        u, mean, ls = args64[:3]
        z = (u - mean) * torch.exp(-ls)
        terms = 0.5 * z * z + ls.abs()
    return terms.reshape(B, -1).sum(dim=1)


def max_err(a, b):
    """Largest |a - b|; equal entries (an overflow to the same infinity too) count as 0."""
    if not a.numel():
        return 0.0
    a, b = a.double(), b.double().to(a.device)
    return torch.where(a == b, torch.zeros_like(a), (a - b).abs()).max().item()


def absmax(t):
    return t.double().abs().max().item() if t.numel() else 0.0


def check_against_truth(op, dtype, fused, twin, truth, abs_sums):
    """float64: ~1e-12 relative; else |fused - truth| <= 2 |twin - truth| + floor."""
    assert len(fused) == len(twin) == len(truth)
    for i, (f, t, r) in enumerate(zip(fused, twin, truth)):
        per_sample = i in PER_SAMPLE.get(op, ())
        what = f"{op} output {i} ({dtype})"
        assert f.dtype == t.dtype, what
        assert f.shape == r.shape and f.is_contiguous() and f.is_cuda, what
        f64, r64 = f.double(), r.double()
        if dtype == torch.float64:
            scale = abs_sums.reshape(-1) if per_sample else max(absmax(r), 1.0)
            bound = 1e-12 * r64.abs() + 1e-12 * scale
            assert bool(((f64 - r64).abs() <= bound).all()), f"{what}: {max_err(f, r):.3g}"
            continue
        e_f, e_t = max_err(f, r), max_err(t, r)
        floor = 2 * torch.finfo(f.dtype).eps * max(absmax(r), 1.0)
        if per_sample and abs_sums.numel():
            floor = max(floor, 2 * torch.finfo(torch.float32).eps * abs_sums.max().item())
        assert e_f <= 2 * e_t + floor, (
            f"{what}: fused err {e_f:.3g} > 2 x twin err {e_t:.3g} + floor {floor:.3g}")


def check_against_cpu(op, dtype, got, want, abs_sums):
    """CUDA vs the CPU kernel: both compute in the accumulation dtype, so they differ by a few
    accumulation-dtype ulps, one ulp of a low-precision output, or the two summation orders."""
    for i, (c, p) in enumerate(zip(got, want)):
        per_sample = i in PER_SAMPLE.get(op, ())
        what = f"{op} output {i} ({dtype}) vs CPU"
        assert c.is_cuda and not p.is_cuda, what
        assert c.dtype == p.dtype and c.shape == p.shape and c.is_contiguous(), what
        c64, p64 = c.cpu().double(), p.double()
        if dtype == torch.float64:
            rel, acc_eps = 1e-12, 1e-12
        else:
            rel, acc_eps = 2 * torch.finfo(dtype).eps, 16 * torch.finfo(torch.float32).eps
        scale = abs_sums.reshape(-1).cpu() if per_sample else max(absmax(p), 1.0)
        bound = rel * p64.abs() + acc_eps * scale
        bad = ~((c64 - p64).abs() <= bound) & (c64 != p64)
        bad &= ~(torch.isnan(c64) & torch.isnan(p64))
        assert not bool(bad.any()), f"{what}: max diff {max_err(c, p):.3g}"


def compare_all(op, shape, dtype, seed=0, **kw):
    cpu_args = make_args(op, shape, dtype, seed=seed, **kw)
    args = move(cpu_args, "cuda")
    fused = run(ops, op, args)
    truth = run(R, op, upcast(args))
    abs_sums = row_abs_sums(op, upcast(args)) if op in PER_SAMPLE else None
    check_against_truth(op, dtype, fused, run(R, op, args), truth, abs_sums)
    check_against_cpu(op, dtype, fused, run(ops, op, cpu_args), abs_sums)
    return fused


# ----------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("n", ROW_LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_matches_cpu_and_twin(op, dtype, n):
    compare_all(op, (5, n), dtype, seed=n)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_one_long_row(op, dtype):
    compare_all(op, (1, LONG_ROW), dtype, seed=11)


@pytest.mark.parametrize("op", OPS)
def test_unclamped_without_grad_logdet_and_higher_rank(op):
    for dtype in (torch.float64, torch.bfloat16):
        compare_all(op, (3, 2, 5, 67), dtype, seed=2, clamp=None, grad_logdet=False)
        compare_all(op, (6,), dtype, seed=3, clamp=None, grad_logdet=False)


@pytest.mark.parametrize("shape", [(3, 40000), (70000, 3), (300, 300)])
@pytest.mark.parametrize("op", OPS)
def test_more_row_and_chunk_layouts(op, shape):
    compare_all(op, shape, torch.float32, seed=4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(5, 1), (4, 7), (3, 1023), (2, 4097), (2, 40001),
                                   (1, LONG_ROW), (70000, 5), (65600, 1100)])
def test_every_element_summed_exactly_once(shape, dtype):
    """Integer data: every per-sample sum is exact (no rounding at any order), so the kernels
    must reproduce it bit for bit; a skipped or doubled element cannot hide in a tolerance."""
    if shape == (65600, 1100) and dtype != torch.float32:
        pytest.skip("one dtype is enough for > 65535 rows of the long-row path")
    g = torch.Generator(device="cuda").manual_seed(5)
    ints = torch.randint(-2, 3, shape, device="cuda", generator=g)
    want = ints.reshape(shape[0], -1).sum(dim=1).to(R.accumulation_dtype(dtype))
    other = torch.randn(shape, device="cuda", generator=g).to(dtype)
    logits = ints.to(dtype)
    _, logdet = ops.affine_coupling(other, other, logits, None)
    assert torch.equal(logdet, want)
    _, logdet_inv = ops.affine_coupling_inverse(other, other, logits, None)
    assert torch.equal(logdet_inv, -want)
    assert torch.equal(ops.gaussian_nll(other, other, logits), want)  # z = 0: terms = log_sigma


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("op", OPS)
def test_empty_batch_and_empty_rows(op):
    for shape in [(0, 5), (0,), (3, 0), (2, 0, 4)]:
        for dtype in (torch.float32, torch.bfloat16):
            args = make_args(op, shape, dtype, device="cuda")
            out = run(ops, op, args)
            want = run(ops, op, make_args(op, shape, dtype))
            for o, w in zip(out, want):
                assert o.is_cuda and o.shape == w.shape and o.dtype == w.dtype
            for i in PER_SAMPLE.get(op, ()):
                assert torch.equal(out[i].cpu(), torch.zeros(shape[0], dtype=out[i].dtype))


def _strided_views(t):
    """Three non-contiguous views with t's values: column-major, every other column, and a
    transpose of a transpose taken from a larger buffer."""
    B = t.shape[0]
    col_major = t.reshape(B, -1).t().contiguous().t().reshape(t.shape)
    wide = torch.zeros((B, 2 * t[0].numel()), dtype=t.dtype, device=t.device)
    wide[:, ::2] = t.reshape(B, -1)
    every_other = wide[:, ::2].reshape(B, -1)
    return col_major, every_other


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_inputs(op, dtype):
    shape = (6, 1031)
    args = make_args(op, shape, dtype, seed=7, device="cuda")
    want = run(ops, op, args)
    for k in range(2):
        views = tuple(_strided_views(a)[k] if isinstance(a, torch.Tensor) and a.dim() == 2
                      else a for a in args)
        assert not any(v.is_contiguous() for v in views if isinstance(v, torch.Tensor)
                       and v.dim() == 2)
        got = run(ops, op, views)
        for i, (g_, w) in enumerate(zip(got, want)):
            # (the backward's grad_shift is grad_y itself, a view like the inputs)
            assert g_.is_contiguous() or (op == "affine_coupling_backward" and i == 2)
            torch.testing.assert_close(g_, w, rtol=0, atol=0, equal_nan=True)
    # An expanded (stride-0) argument.
    expanded = list(args)
    expanded[1] = args[1][:1].expand(shape)
    got = run(ops, op, tuple(expanded))
    ref = run(ops, op, move(tuple(expanded), "cpu"))
    check_against_cpu(op, dtype, got, ref,
                      row_abs_sums(op, upcast(expanded)) if op in PER_SAMPLE else None)


def _misaligned(t):
    """Same values, contiguous, but starting one element past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buf[1:].view(t.shape)
    view.copy_(t)
    assert view.is_contiguous() and view.data_ptr() % 16 != 0
    return view


@pytest.mark.parametrize("n", [7, 1023, 4097, 100_003])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_misaligned_pointers(op, dtype, n):
    cpu_args = make_args(op, (3, n), dtype, seed=n + 1)
    args = move(cpu_args, "cuda")
    want = run(ops, op, cpu_args)
    abs_sums = row_abs_sums(op, upcast(args)) if op in PER_SAMPLE else None
    all_shifted = tuple(_misaligned(a) if isinstance(a, torch.Tensor) and a.dim() == 2 else a
                        for a in args)
    first_shifted = (_misaligned(args[0]),) + args[1:]
    for variant in (all_shifted, first_shifted):
        got = run(ops, op, variant)
        check_against_cpu(op, dtype, got, want, abs_sums)
        check_against_truth(op, dtype, got, run(R, op, args), run(R, op, upcast(args)),
                            abs_sums)


# ----------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
@pytest.mark.parametrize("clamp", (None, CLAMP))
def test_autograd_on_cuda_matches_cpu(dtype, clamp):
    g = torch.Generator().manual_seed(8)
    shape = (4, 3, 129)

    def leaves(device):
        base = [torch.randn(shape, generator=torch.Generator().manual_seed(k), dtype=dtype)
                for k in range(5)]
        base[2] = 0.5 * base[2]
        base[4] = 0.3 * base[4]
        return [b.to(device).requires_grad_() for b in base]

    w = torch.randn(shape, generator=g, dtype=dtype)
    v = torch.randn(shape[0], generator=g, dtype=dtype)

    def loss(x, shift, logits, mean, log_sigma):
        y, ld = ops.affine_coupling(x, shift, logits, clamp)
        x_back, ld_inv = ops.affine_coupling_inverse(y, shift, logits, clamp)
        nll = ops.gaussian_nll(y, mean, log_sigma)
        wd, vd = w.to(y.device), v.to(y.device)
        return (y * wd).sum() + (ld * vd).sum() + (x_back * wd).sum() + ld_inv.sum() + nll.sum()

    grads = {}
    for device in ("cpu", "cuda"):
        ls = leaves(device)
        grads[device] = torch.autograd.grad(loss(*ls), ls)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for gc, gp in zip(grads["cuda"], grads["cpu"]):
        assert gc.is_cuda
        torch.testing.assert_close(gc.cpu(), gp, rtol=tol, atol=tol)


def test_gradcheck_on_cuda():
    args = [t.requires_grad_() for t in make_args("affine_coupling", (3, 5), torch.float64,
                                                  device="cuda")[:3]]
    assert torch.autograd.gradcheck(lambda a, b, c: ops.affine_coupling(a, b, c, CLAMP), args)
    args = [t.requires_grad_() for t in make_args("gaussian_nll", (2, 6), torch.float64,
                                                  device="cuda")]
    assert torch.autograd.gradcheck(ops.gaussian_nll, args)


def _opcheck_samples():
    a, b, c, g = make_args("affine_coupling_backward", (3, 37), torch.float32, device="cuda")[:4]
    gl = torch.randn(3, device="cuda")
    grad = lambda *ts: [t.clone().requires_grad_() for t in ts]  # noqa: E731
    return [
        (torch.ops.ntm.affine_coupling.default, (*grad(a, b, c), 2.0)),
        (torch.ops.ntm.affine_coupling_inverse.default, (*grad(a, b, c), None)),
        (torch.ops.ntm.affine_coupling_backward.default, (a, b, c, g, gl, 2.0)),
        (torch.ops.ntm.affine_coupling_backward.default, (a, b, c, g, None, None)),
        (torch.ops.ntm.gaussian_nll.default, tuple(grad(a, b, c))),
        (torch.ops.ntm.gaussian_nll_backward.default, (a, b, c, gl)),
    ]


@pytest.mark.parametrize("case", range(6))
def test_opcheck_on_cuda(case):
    op, args = _opcheck_samples()[case]
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_on_cuda():
    assert_compiled_matches_eager((4, 33), device="cuda")


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=str)
@pytest.mark.parametrize("shape", [(2, LONG_ROW), (64, 4097), (1000, 37)])
@pytest.mark.parametrize("op", OPS)
def test_bit_identical_across_runs(op, shape, dtype):
    if shape[1] == LONG_ROW and dtype == torch.float64 and op.endswith("backward"):
        pytest.skip("long float64 backward adds nothing the others do not cover")
    args = make_args(op, shape, dtype, seed=9, device="cuda")
    first = run(ops, op, args)
    again = run(ops, op, args)
    fresh = run(ops, op, tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
    torch.cuda.synchronize()
    for a, b, c in zip(first, again, fresh):
        assert torch.equal(a, b) and torch.equal(a, c)


# ----------------------------------------------------------------------------- errors, NaN


def test_device_mismatch_raises_a_clear_error():
    x, shift, logits, _ = make_args("affine_coupling", (3, 8), torch.float32)
    cx, cshift, clogits = x.cuda(), shift.cuda(), logits.cuda()
    with pytest.raises(ValueError, match=r"'shift' must be on the device of 'x' \(cuda"):
        ops.affine_coupling(cx, shift, clogits)
    with pytest.raises(ValueError, match=r"'shift' must be on the device of 'x' \(cpu\)"):
        ops.affine_coupling(x, cshift, logits)
    with pytest.raises(ValueError, match=r"'scale_logits' must be on the device of 'y'"):
        ops.affine_coupling_inverse(cx, cshift, logits)
    with pytest.raises(ValueError, match=r"'grad_logdet' must be on the device of 'y'"):
        ops.affine_coupling_backward(cx, cshift, clogits, cx, torch.zeros(3))
    with pytest.raises(ValueError, match=r"'grad_logdet' must be on the device of 'y'"):
        ops.affine_coupling_backward(x, shift, logits, x, torch.zeros(3, device="cuda"))
    with pytest.raises(ValueError, match=r"'log_sigma' must be on the device of 'u'"):
        ops.gaussian_nll(cx, cshift, logits)
    with pytest.raises(ValueError, match=r"'grad' must be on the device of 'u'"):
        ops.gaussian_nll_backward(cx, cshift, clogits, torch.ones(3))
    # Nothing was left broken: the device still runs kernels.
    ops.affine_coupling(cx, cshift, clogits)
    torch.cuda.synchronize()


def test_other_bad_arguments_still_raise_on_cuda():
    x = torch.randn(3, 4, device="cuda")
    with pytest.raises(ValueError, match=r"'shift' must have the shape of 'x'"):
        ops.affine_coupling(x, torch.zeros(3, 5, device="cuda"), x)
    with pytest.raises(TypeError, match=r"'scale_logits' must have the dtype of 'x'"):
        ops.affine_coupling(x, x, x.double())
    with pytest.raises(ValueError, match=r"'clamp' must be None or a finite number > 0"):
        ops.affine_coupling(x, x, x, 0.0)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=str)
def test_nan_in_nan_out_and_nothing_masked(dtype):
    n = 4097
    for op in OPS:
        args = list(make_args(op, (3, n), dtype, seed=10, device="cuda"))
        args[0][1, 5] = float("nan")          # one element of row 1
        args[2][2, n - 1] = float("nan")      # the last element (scalar tail) of row 2
        if op == "affine_coupling_backward":
            args[3][0, 0] = float("nan")      # grad_y, first element of row 0
        got = run(ops, op, tuple(args))
        want = run(R, op, upcast(tuple(args)))
        for g_, w in zip(got, want):
            assert torch.equal(torch.isnan(g_).cpu(), torch.isnan(w).cpu()), op
            assert bool(torch.isnan(g_).any()), op


def test_runs_on_the_tensors_device_and_current_stream():
    args = make_args("affine_coupling", (4, 1000), torch.float32, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y, ld = ops.affine_coupling(*args)
        nll = ops.gaussian_nll(y, args[1], args[2])
    stream.synchronize()
    y_ref, ld_ref = ops.affine_coupling(*args)
    assert torch.equal(y, y_ref) and torch.equal(ld, ld_ref)
    assert torch.equal(nll, ops.gaussian_nll(y_ref, args[1], args[2]))
    if torch.cuda.device_count() > 1:
        other = move(args, "cuda:1")
        y1, _ = ops.affine_coupling(*other)
        assert y1.device == torch.device("cuda:1")
        assert torch.equal(y1.cpu(), y_ref.cpu())
