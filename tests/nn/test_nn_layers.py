"""Single invertible layers: inverse, log-det vs brute-force Jacobians, reverse_step vs autograd."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from ntm_engine.nn import (AffineCoupling, InvertibleLinear, InvertibleModule,
                           InvertibleSequential, Permutation)
from stack_factory import assert_close_rel, coupling, make_stack, randomize_linear

DIM, CTX, B = 6, 3, 4


class ContextShift(InvertibleModule):
    """A test layer without its own reverse_step (uses the generic one):
    ``y = x * exp(log_a) + context @ W^T``, logdet ``sum(log_a)``."""

    def __init__(self, dim, context_dim):
        super().__init__()
        self.log_a = nn.Parameter(torch.linspace(-0.3, 0.4, dim))
        self.proj = nn.Linear(context_dim, dim)

    def forward(self, x, context=None):
        y = x * self.log_a.exp() + self.proj(context)
        return y, self.log_a.sum().expand(x.shape[0])

    def inverse(self, y, context=None):
        x = (y - self.proj(context)) * (-self.log_a).exp()
        return x, -self.log_a.sum().expand(y.shape[0])


def _lu(seed=0):
    lin = InvertibleLinear(DIM, init="orthogonal", seed=seed)
    randomize_linear(lin, 0.2, torch.Generator().manual_seed(seed + 5))
    return lin.double()


LAYERS = {
    "coupling_prefix": lambda: coupling(DIM, CTX, 0).double(),
    "coupling_interleaved": lambda: coupling(DIM, CTX, 1).double(),
    "coupling_suffix": lambda: coupling(DIM, CTX, 2).double(),
    "coupling_noclamp_noctx": lambda: coupling(DIM, 0, 3, clamp=None).double(),
    "permutation_random": lambda: Permutation(DIM, seed=3).double(),
    "permutation_reverse": lambda: Permutation(DIM, mode="reverse").double(),
    "linear_lu": _lu,
    "generic_layer": lambda: ContextShift(DIM, CTX).double(),
    "stack": lambda: make_stack(2, DIM, CTX),
}


def _inputs(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, DIM, generator=g, dtype=torch.float64)
    ctx_dim = getattr(layer, "context_dim", CTX)
    c = torch.randn(B, ctx_dim, generator=g, dtype=torch.float64) if ctx_dim else None
    return x, c


@pytest.mark.parametrize("name", LAYERS)
def test_inverse_of_forward_is_identity(name):
    layer = LAYERS[name]()
    x, c = _inputs(layer)
    with torch.no_grad():
        y, ld = layer(x, c)
        x2, ld_inv = layer.inverse(y, c)
    assert not torch.allclose(y, x)  # the layer is not the identity
    torch.testing.assert_close(x2, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(ld_inv, -ld, rtol=0, atol=1e-12)
    assert ld.shape == (B,) and ld.dtype == torch.float64


@pytest.mark.parametrize("name", LAYERS)
def test_logdet_matches_bruteforce_jacobian(name):
    layer = LAYERS[name]()
    x, c = _inputs(layer, seed=1)
    _, ld = layer(x, c)
    for b in range(B):
        cb = None if c is None else c[b:b + 1]
        jac = jacobian(lambda v: layer(v[None], cb)[0][0], x[b])
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(logabs.item() - ld[b].item()) < 1e-10, (b, logabs.item(), ld[b].item())
        # and the Jacobian is not diagonal-trivial for couplings/mixing (a real test)
    if name.startswith(("coupling", "linear", "stack")):
        assert ld.abs().max() > 1e-3


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("with_logdet_grad", [True, False])
def test_reverse_step_matches_autograd(name, with_logdet_grad):
    layer = LAYERS[name]()
    x, c = _inputs(layer, seed=2)
    g = torch.Generator().manual_seed(9)
    params = [p for p in layer.parameters()]
    x_in = x.clone().requires_grad_()
    c_in = None if c is None else c.clone().requires_grad_()
    y, ld = layer(x_in, c_in)
    gy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    gl = torch.randn(ld.shape, generator=g, dtype=ld.dtype) if with_logdet_grad else None
    wanted = [x_in] + ([c_in] if c_in is not None else []) + params
    outs = [y] + ([ld] if gl is not None and ld.requires_grad else [])
    gouts = [gy] + ([gl] if gl is not None and ld.requires_grad else [])
    ref = torch.autograd.grad(outs, wanted, gouts, allow_unused=True)
    with torch.no_grad():  # reverse_step runs inside a backward, with grad mode off
        c_rs = None if c is None else c.clone().requires_grad_()
        x_re, gx, gc, pg = layer.reverse_step(y.detach(), gy, gl, c_rs)
    torch.testing.assert_close(x_re, x, rtol=0, atol=1e-12)
    assert_close_rel(gx, ref[0], 1e-10, "grad_x")
    k = 1
    if c is not None:
        if ref[1] is None:
            assert gc is None or gc.abs().max() == 0
        else:
            assert_close_rel(gc, ref[1], 1e-10, "grad_context")
        k = 2
    assert len(pg) == len(params)
    for i, (a, r) in enumerate(zip(pg, ref[k:])):
        if r is None:
            assert a is None or a.abs().max() == 0
        else:
            assert_close_rel(a, r, 1e-10, f"param {i}")


def test_new_layers_are_the_identity():
    x = torch.randn(5, 8)
    c = torch.randn(5, 2)
    stack = InvertibleSequential(AffineCoupling(8, 2, hidden=16), InvertibleLinear(8),
                                 AffineCoupling(8, 2, hidden=16, mask=torch.arange(8) % 2 == 0))
    z, ld = stack(x, c)
    torch.testing.assert_close(z, x, rtol=0, atol=0)
    assert torch.equal(ld, torch.zeros(5))


def test_reverse_step_without_context_grad_returns_none():
    layer = coupling(DIM, CTX, 0).double()
    x, c = _inputs(layer)
    y, _ = layer(x, c)
    with torch.no_grad():
        _, _, gc, _ = layer.reverse_step(y.detach(), torch.ones_like(y), None, c)
    assert gc is None


def test_permutation_is_saved_in_state_dict():
    a, b = Permutation(10, seed=1), Permutation(10, seed=2)
    assert not torch.equal(a.perm, b.perm)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.perm, b.perm) and torch.equal(a.inverse_perm, b.inverse_perm)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(Permutation(10, generator=g1).perm, Permutation(10, generator=g2).perm)


def test_linear_logdet_is_sum_of_log_scales_and_dtypes():
    lin = _lu()
    for dtype in (torch.float32, torch.bfloat16):
        m = InvertibleLinear(DIM, init="orthogonal", seed=0).to(dtype)
        x = torch.randn(3, DIM).to(dtype)
        y, ld = m(x)
        assert y.dtype == dtype and ld.dtype == torch.float32
    w = lin.weight(torch.float64)
    assert abs(torch.linalg.slogdet(w)[1].item() - lin.log_scale.sum().item()) < 1e-12


@pytest.mark.parametrize("bad", ["dim", "context_missing", "context_shape"])
def test_bad_inputs_name_the_problem(bad):
    layer = AffineCoupling(DIM, CTX, hidden=8)
    x, c = torch.randn(2, DIM), torch.randn(2, CTX)
    if bad == "dim":
        with pytest.raises(ValueError, match=r"\[B, 6\]"):
            layer(torch.randn(2, DIM + 1), c)
        with pytest.raises(ValueError, match=r"\[B, 6\]"):
            Permutation(DIM)(torch.randn(2, 5))
        with pytest.raises(ValueError, match=r"\[B, 6\]"):
            InvertibleLinear(DIM)(torch.randn(2, 5))
    elif bad == "context_missing":
        with pytest.raises(ValueError, match="context"):
            layer(x)
    else:
        with pytest.raises(ValueError, match="context"):
            layer(x, torch.randn(2, CTX + 1))
    with pytest.raises(ValueError):
        Permutation(DIM, mode="sorted")
    with pytest.raises(ValueError):
        InvertibleLinear(DIM, init="random")
