"""Each fused op against its pure-PyTorch twin (the spec)."""
import pytest
import torch

from ntm_engine import ops
from ntm_engine import reference as R

from op_cases import (LOW_PRECISION, SUPPORTED_CAPABILITIES, assert_within_twice_twin,
                      make_inputs, using_capability)

CLAMPS = [None, 1.5]


@pytest.fixture(autouse=True, params=SUPPORTED_CAPABILITIES)
def cpu_capability(request):
    """Every test here runs once per CPU kernel variant this machine supports."""
    with using_capability(request.param):
        yield request.param


def _forward_ops(clamp):
    return {
        "affine_coupling": (lambda a, b, c: ops.affine_coupling(a, b, c, clamp),
                            lambda a, b, c: R.affine_coupling(a, b, c, clamp)),
        "affine_coupling_inverse": (lambda a, b, c: ops.affine_coupling_inverse(a, b, c, clamp),
                                    lambda a, b, c: R.affine_coupling_inverse(a, b, c, clamp)),
        "gaussian_nll": (lambda a, b, c: (ops.gaussian_nll(a, b, c),),
                         lambda a, b, c: (R.gaussian_nll(a, b, c),)),
    }


@pytest.mark.parametrize("clamp", CLAMPS)
@pytest.mark.parametrize("name", ["affine_coupling", "affine_coupling_inverse", "gaussian_nll"])
def test_float64_matches_twin(name, clamp):
    fused, twin = _forward_ops(clamp)[name]
    a, b, c = make_inputs((7, 3, 45), torch.float64)
    for f, t in zip(fused(a, b, c), twin(a, b, c)):
        assert f.dtype == t.dtype and f.shape == t.shape
        torch.testing.assert_close(f, t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("clamp", CLAMPS)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("name", ["affine_coupling", "affine_coupling_inverse", "gaussian_nll"])
def test_low_precision_within_twice_twin_error(name, dtype, clamp):
    fused, twin = _forward_ops(clamp)[name]
    a, b, c = make_inputs((16, 1031), dtype, scale=0.7)
    truth = twin(a.double(), b.double(), c.double())
    assert_within_twice_twin(fused(a, b, c), twin(a, b, c), truth, dtype, name)


@pytest.mark.parametrize("clamp", CLAMPS)
@pytest.mark.parametrize("dtype", (torch.float64,) + LOW_PRECISION)
def test_fused_backward_matches_twin(dtype, clamp):
    x, shift, logits = make_inputs((9, 517), dtype, seed=3, scale=0.8)
    y, _ = R.affine_coupling(x, shift, logits, clamp)
    g = torch.Generator().manual_seed(4)
    grad_y = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
    grad_ld = torch.randn(y.shape[0], generator=g, dtype=torch.float64)
    fused = ops.affine_coupling_backward(y, shift, logits, grad_y, grad_ld, clamp)
    twin = R.affine_coupling_backward(y, shift, logits, grad_y, grad_ld, clamp)
    if dtype == torch.float64:
        for f, t in zip(fused, twin):
            torch.testing.assert_close(f, t, rtol=1e-12, atol=1e-12)
    else:
        truth = R.affine_coupling_backward(y.double(), shift.double(), logits.double(),
                                           grad_y.double(), grad_ld, clamp)
        assert_within_twice_twin(fused, twin, truth, dtype, "affine_coupling_backward")


@pytest.mark.parametrize("clamp", CLAMPS)
def test_fused_backward_equals_autograd_through_twin(clamp):
    x, shift, logits = make_inputs((5, 33), torch.float64, seed=5)
    x, shift, logits = (t.requires_grad_() for t in (x, shift, logits))
    y, ld = R.affine_coupling(x, shift, logits, clamp)
    grad_y, grad_ld = torch.randn_like(y), torch.randn_like(ld)
    gx, gb, gl = torch.autograd.grad((y, ld), (x, shift, logits), (grad_y, grad_ld))
    x_rec, fx, fb, fl = ops.affine_coupling_backward(y.detach(), shift.detach(), logits.detach(),
                                                     grad_y, grad_ld, clamp)
    for got, want in [(x_rec, x), (fx, gx), (fb, gb), (fl, gl)]:
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)


def test_backward_without_grad_logdet_equals_zero_grad_logdet():
    y, shift, logits = make_inputs((4, 10), torch.float64, seed=6)
    grad_y = torch.randn_like(y)
    none = ops.affine_coupling_backward(y, shift, logits, grad_y, None, 2.0)
    zero = ops.affine_coupling_backward(y, shift, logits, grad_y, torch.zeros(4, dtype=y.dtype), 2.0)
    for a, b in zip(none, zero):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_gaussian_nll_backward_matches_twin(dtype):
    u, mean, ls = make_inputs((6, 77), dtype, seed=7, scale=0.5)
    grad = torch.randn(6, dtype=torch.float64)
    fused = ops.gaussian_nll_backward(u, mean, ls, grad)
    twin = R.gaussian_nll_backward(u, mean, ls, grad)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for f, t in zip(fused, twin):
        torch.testing.assert_close(f, t, rtol=tol, atol=tol)


def test_logdet_is_not_the_mean():
    x, shift, logits = make_inputs((3, 100), torch.float64)
    _, ld = ops.affine_coupling(x, shift, logits)
    torch.testing.assert_close(ld, logits.sum(dim=1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("clamp", [None, 0.5, 2.0, 10.0])
def test_float32_transcendentals_over_a_wide_range(clamp):
    """The CPU kernels use their own SIMD exp/tanh: sweep the whole useful range."""
    limit = 80.0 if clamp is None else 30.0
    logits = torch.linspace(-limit, limit, 7 * 28_571).reshape(7, -1)
    x = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    shift = torch.zeros_like(x)
    fused = ops.affine_coupling(x, shift, logits, clamp)
    twin = R.affine_coupling(x, shift, logits, clamp)
    truth = R.affine_coupling(x.double(), shift.double(), logits.double(), clamp)
    # relative errors: y spans many decades here, so compare y / |truth|
    rel = lambda out: (out[0].double() - truth[0]).abs() / truth[0].abs().clamp_min(1e-30)  # noqa: E731
    assert rel(fused).max() <= 2 * rel(twin).max() + 2 * torch.finfo(torch.float32).eps
    assert_within_twice_twin(fused[1:], twin[1:], truth[1:], torch.float32, "logdet")
    grads = ops.affine_coupling_backward(fused[0], shift, logits, torch.ones_like(x), None, clamp)
    grads_twin = R.affine_coupling_backward(fused[0], shift, logits, torch.ones_like(x), None, clamp)
    grads_true = R.affine_coupling_backward(fused[0].double(), shift.double(), logits.double(),
                                            torch.ones_like(x).double(), None, clamp)
    assert_within_twice_twin(grads[3:], grads_twin[3:], grads_true[3:], torch.float32,
                             "grad_scale_logits")


def test_float32_exp_at_the_edges_of_its_range():
    """y = 1 * exp(s) + 0 (no clamp) shows the kernels' SIMD exp: over/underflow, the
    subnormal range, infinities and NaN.  Bound: 2 ulp relative where exp(s) is a normal float,
    and FLT_MIN absolute below it (the AVX-512 exp returns the subnormals, the AVX2 one 0)."""
    s = torch.tensor([-float("inf"), -200.0, -104.0, -103.0, -100.0, -95.0, -88.0, -87.3, -80.0,
                      -1.0, 0.0, 1.0, 80.0, 88.0, 88.7, 88.72, 88.73, 89.0, 100.0, float("inf"),
                      float("nan")] * 3).reshape(3, -1)
    y, _ = ops.affine_coupling(torch.ones_like(s), torch.zeros_like(s), s)
    want = torch.exp(s.double())
    assert torch.equal(y.isnan(), want.isnan())
    finite = ~want.isnan()
    tiny = torch.finfo(torch.float32).tiny
    normal = finite & (want >= tiny) & (want <= torch.finfo(torch.float32).max)
    rel = ((y.double() - want) / want)[normal].abs().max().item()
    assert rel <= 2 * torch.finfo(torch.float32).eps, rel
    assert torch.equal(y[finite & (want > torch.finfo(torch.float32).max)],
                       torch.full_like(y[finite & (want > torch.finfo(torch.float32).max)],
                                       float("inf")))
    below = finite & (want < tiny)
    assert (y[below].double() - want[below]).abs().max().item() <= tiny
    assert (y[below] >= 0).all()
