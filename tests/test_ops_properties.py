"""Mathematical properties of the fused ops: gradients, inverses, Jacobians, shapes."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntm_engine import ops
from ntm_engine import reference as R

from op_cases import make_inputs

CLAMPS = [None, 1.5]


@pytest.mark.parametrize("clamp", CLAMPS)
def test_gradcheck_affine_coupling(clamp):
    inputs = [t.requires_grad_() for t in make_inputs((3, 2, 5), torch.float64, seed=1)]
    assert torch.autograd.gradcheck(lambda a, b, c: ops.affine_coupling(a, b, c, clamp), inputs)


@pytest.mark.parametrize("clamp", CLAMPS)
def test_gradcheck_affine_coupling_inverse(clamp):
    inputs = [t.requires_grad_() for t in make_inputs((3, 7), torch.float64, seed=2)]
    assert torch.autograd.gradcheck(
        lambda a, b, c: ops.affine_coupling_inverse(a, b, c, clamp), inputs)


def test_gradcheck_gaussian_nll():
    inputs = [t.requires_grad_() for t in make_inputs((4, 6), torch.float64, seed=3, scale=0.5)]
    assert torch.autograd.gradcheck(ops.gaussian_nll, inputs)


@pytest.mark.parametrize("clamp", CLAMPS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_inverse_of_forward_is_identity(clamp, dtype):
    x, shift, logits = make_inputs((8, 129), dtype, seed=4)
    y, ld = ops.affine_coupling(x, shift, logits, clamp)
    x_back, ld_inv = ops.affine_coupling_inverse(y, shift, logits, clamp)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(x_back, x, rtol=tol, atol=tol)
    torch.testing.assert_close(ld + ld_inv, torch.zeros_like(ld), rtol=0, atol=tol)


@pytest.mark.parametrize("clamp", CLAMPS)
def test_logdet_equals_slogdet_of_brute_force_jacobian(clamp):
    x, shift, logits = make_inputs((3, 4), torch.float64, seed=5, scale=1.5)
    _, logdet = ops.affine_coupling(x, shift, logits, clamp)
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda v: ops.affine_coupling(v.unsqueeze(0), shift[b:b + 1], logits[b:b + 1],
                                          clamp)[0].squeeze(0), x[b])
        sign, expected = torch.linalg.slogdet(jac)
        assert sign.item() == 1.0
        torch.testing.assert_close(logdet[b], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(5,), (2, 1), (3, 3), (2, 1023), (2, 3, 1, 5), (1, 40000)])
def test_shapes_ranks_and_odd_sizes(shape):
    x, shift, logits = make_inputs(shape, torch.float64, seed=6)
    for fused, twin in [(ops.affine_coupling, R.affine_coupling),
                        (ops.affine_coupling_inverse, R.affine_coupling_inverse)]:
        y, ld = fused(x, shift, logits, 2.0)
        y_r, ld_r = twin(x, shift, logits, 2.0)
        assert y.shape == x.shape and ld.shape == (shape[0],)
        torch.testing.assert_close(y, y_r, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ld, ld_r, rtol=1e-12, atol=1e-10)
    nll = ops.gaussian_nll(x, shift, logits)
    torch.testing.assert_close(nll, R.gaussian_nll(x, shift, logits), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_batch_and_empty_rows(dtype):
    for shape in [(0, 5), (0,), (3, 0)]:
        x, shift, logits = make_inputs(shape, dtype)
        y, ld = ops.affine_coupling(x, shift, logits)
        assert y.shape == x.shape and ld.shape == (shape[0],)
        assert torch.equal(ld, torch.zeros_like(ld))
        grads = ops.affine_coupling_backward(y, shift, logits, y, None)
        assert all(g.shape == x.shape for g in grads)
        assert ops.gaussian_nll(x, shift, logits).shape == (shape[0],)


def test_non_contiguous_and_expanded_inputs():
    base = make_inputs((6, 20), torch.float64, seed=7)
    x = base[0].t().contiguous().t()               # column-major
    shift = base[1][:, ::2].repeat(1, 2)           # fresh, but compare with a strided view too
    strided = torch.randn(6, 40, dtype=torch.float64)[:, ::2]
    expanded = torch.randn(1, 20, dtype=torch.float64).expand(6, 20)
    for a, b, c in [(x, strided, expanded), (expanded, shift, strided)]:
        assert not (a.is_contiguous() and b.is_contiguous() and c.is_contiguous())
        y, ld = ops.affine_coupling(a, b, c, 3.0)
        y_r, ld_r = R.affine_coupling(a.contiguous(), b.contiguous(), c.contiguous(), 3.0)
        torch.testing.assert_close(y, y_r, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ld, ld_r, rtol=1e-12, atol=1e-12)
        grads = ops.affine_coupling_backward(y, b, c, a, ld, 3.0)
        want = R.affine_coupling_backward(y, b.contiguous(), c.contiguous(), a.contiguous(), ld, 3.0)
        for g, w in zip(grads, want):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_nan_propagates_and_is_not_masked():
    x, shift, logits = make_inputs((3, 9), torch.float32)
    x[1, 4] = float("nan")
    y, ld = ops.affine_coupling(x, shift, logits, 2.0)
    assert torch.isnan(y[1, 4]) and torch.isfinite(ld).all()
    assert torch.isfinite(y[0]).all() and torch.isfinite(y[2]).all()
    logits[2, 0] = float("nan")
    _, ld = ops.affine_coupling(x, shift, logits, 2.0)
    assert torch.isnan(ld[2]) and torch.isfinite(ld[:2]).all()
    u, mean, ls = make_inputs((2, 5), torch.float32)
    mean[0, 0] = float("nan")
    nll = ops.gaussian_nll(u, mean, ls)
    assert torch.isnan(nll[0]) and torch.isfinite(nll[1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple),
    clamp=st.one_of(st.none(), st.floats(0.1, 10.0)),
    scale=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_random_shapes_and_values(shape, clamp, scale, seed):
    x, shift, logits = make_inputs(shape, torch.float64, seed=seed, scale=scale)
    y, ld = ops.affine_coupling(x, shift, logits, clamp)
    y_r, ld_r = R.affine_coupling(x, shift, logits, clamp)
    torch.testing.assert_close(y, y_r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld, ld_r, rtol=1e-12, atol=1e-11)
    x_back, ld_inv = ops.affine_coupling_inverse(y, shift, logits, clamp)
    torch.testing.assert_close(x_back, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(ops.gaussian_nll(x, shift, logits),
                               R.gaussian_nll(x, shift, logits), rtol=1e-12, atol=1e-9)
