"""The activation-free backward of InvertibleSequential against plain autograd."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch.func import functional_call

from ntm_engine.nn import InvertibleSequential, Permutation
from stack_factory import assert_close_rel, grads_of, make_stack, stack_loss

B, DIM, CTX = 5, 6, 3


def _data(dtype=torch.float64, seed=0, x_grad=True, c_grad=True, batch=B, dim=DIM, ctx=CTX):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=g, dtype=torch.float64).to(dtype)
    c = torch.randn(batch, ctx, generator=g, dtype=torch.float64).to(dtype)
    return x.requires_grad_(x_grad), c.requires_grad_(c_grad)


def _compare(stack, x, c, rtol):
    z_r, ld_r, g_r = grads_of(stack, x, c, reversible=True)
    z_p, ld_p, g_p = grads_of(stack, x, c, reversible=False)
    assert_close_rel(z_r, z_p, rtol, "z")
    assert_close_rel(ld_r, ld_p, rtol, "logdet")
    names = ["x", "context"] + [n for n, _ in stack.named_parameters()]
    n_checked = 0
    for name, a, b in zip(names, g_r, g_p):
        assert (a is None) == (b is None), name
        if b is not None:
            assert_close_rel(a, b, rtol, name)
            n_checked += 1
    return n_checked


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_gradients_match_plain_autograd(dtype, rtol):
    stack = make_stack(4, DIM, CTX, dtype=dtype)
    x, c = _data(dtype)
    n = _compare(stack, x, c, rtol)
    assert n == 2 + len(list(stack.parameters()))
    # the stack really is a single autograd node
    stack.reversible = True
    z, _ = stack(x, c)
    assert type(z.grad_fn).__name__ == "_ReversibleStackBackward"


def test_gradcheck_float64_small_stack_with_context():
    stack = make_stack(2, 4, 2, hidden=6)
    x, c = _data(torch.float64, batch=3, dim=4, ctx=2)
    # inputs and context: the full Jacobian
    assert torch.autograd.gradcheck(lambda x, c: stack(x, c), (x, c), eps=1e-6, atol=1e-7,
                                    rtol=1e-6)
    # parameters too (passed as inputs through functional_call)
    names = [n for n, _ in stack.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in stack.parameters()]

    def f(x, c, *ps):
        return functional_call(stack, dict(zip(names, ps)), (x, c))

    assert torch.autograd.gradcheck(f, (x, c, *params), eps=1e-6, atol=1e-7, rtol=1e-6)
    z, _ = f(x, c, *params)
    assert type(z.grad_fn).__name__ == "_ReversibleStackBackward"


def test_functional_call_uses_the_tensors_given_not_the_module_parameters():
    # The parameters swapped in by functional_call differ from the module's own: the backward
    # (which runs after functional_call restored the module) must still use the given ones.
    stack = make_stack(2, DIM, CTX)
    x, c = _data()
    names = [n for n, _ in stack.named_parameters()]
    given = [(p.detach() * 1.1).requires_grad_() for p in stack.parameters()]
    z, ld = functional_call(stack, dict(zip(names, given)), (x, c))
    grads = torch.autograd.grad(stack_loss(z, ld), given)
    ref = make_stack(2, DIM, CTX, reversible=False)
    with torch.no_grad():
        for p, q in zip(ref.parameters(), given):
            p.copy_(q)
    zr, ldr = ref(x, c)
    stack_loss(zr, ldr).backward()
    for a, p in zip(grads, ref.parameters()):
        assert_close_rel(a, p.grad, 1e-10)


@pytest.mark.parametrize("x_grad,c_grad", [(False, True), (True, False), (False, False)])
def test_inputs_that_do_not_require_grad(x_grad, c_grad):
    stack = make_stack(3, DIM, CTX)
    x, c = _data(x_grad=x_grad, c_grad=c_grad)
    _compare(stack, x, c, 1e-10)
    stack.reversible = True
    stack.zero_grad(set_to_none=True)
    z, ld = stack(x, c)
    stack_loss(z, ld).backward()
    assert (x.grad is not None) == x_grad and (c.grad is not None) == c_grad
    assert all(p.grad is not None for p in stack.parameters())


def test_frozen_parameters_and_context_only_grad():
    stack = make_stack(2, DIM, CTX)
    stack.layers[0].requires_grad_(False)
    x, c = _data(x_grad=False, c_grad=True)
    _compare(stack, x, c, 1e-10)
    assert all(p.grad is None for p in stack.layers[0].parameters())


@pytest.mark.parametrize("use", ["z_only", "logdet_only"])
def test_loss_on_one_output_only(use):
    stack = make_stack(3, DIM, CTX)
    x, c = _data()
    res = []
    for rev in (True, False):
        stack.reversible = rev
        z, ld = stack(x, c)
        loss = z.pow(2).sum() if use == "z_only" else ld.sum()
        res.append(torch.autograd.grad(loss, [x, c, *stack.parameters()], allow_unused=True))
    for a, b in zip(*res):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            assert_close_rel(a, b, 1e-10)


def test_no_grad_needed_just_runs_the_layers():
    stack = make_stack(3, DIM, CTX)
    x, c = _data(x_grad=False, c_grad=False)
    with torch.no_grad():
        z0, ld0 = stack(x, c)
    assert z0.grad_fn is None
    stack.requires_grad_(False)
    z1, ld1 = stack(x, c)
    assert z1.grad_fn is None and ld1.grad_fn is None
    torch.testing.assert_close(z1, z0, rtol=0, atol=0)
    torch.testing.assert_close(ld1, ld0, rtol=0, atol=0)


def _assert_reversible_matches_plain(stack, x, c, seed):
    """Reversible and plain backward, each from the global RNG seeded with ``seed`` (so the
    same dropout masks): same output, gradients within 1e-10.  Returns the output."""
    results = []
    for rev in (True, False):
        torch.manual_seed(seed)
        results.append(grads_of(stack, x, c, reversible=rev))
    (z_r, _, g_r), (z_p, _, g_p) = results
    torch.testing.assert_close(z_r, z_p, rtol=0, atol=1e-12)
    for a, b in zip(g_r, g_p):
        assert_close_rel(a, b, 1e-10)
    return z_r


def test_dropout_is_replayed_in_the_backward():
    stack = make_stack(3, DIM, CTX, dropout=0.3, hidden=32)
    stack.train()
    x, c = _data()
    z_r = _assert_reversible_matches_plain(stack, x, c, seed=123)
    # dropout really changes the result (different masks give different outputs)
    torch.manual_seed(124)
    stack.reversible = True
    z_other, _ = stack(x, c)
    assert not torch.allclose(z_other, z_r)
    # the backward restores the global RNG: it is where the forward left it
    torch.manual_seed(5)
    z, ld = stack(x, c)
    after_forward = torch.get_rng_state()
    stack_loss(z, ld).backward()
    assert torch.equal(torch.get_rng_state(), after_forward)


def test_dropout_reconstruction_is_exact_with_replay():
    stack = make_stack(3, DIM, CTX, dropout=0.5, hidden=32, check_reconstruction=True)
    x, c = _data()
    z, ld = stack(x, c)
    stack_loss(z, ld).backward()
    assert len(stack.reconstruction_error) == len(stack.layers)
    assert max(stack.reconstruction_error) < 1e-12


def test_second_forward_before_backward():
    stack = make_stack(3, DIM, CTX)
    x1, c1 = _data(seed=1)
    x2, c2 = _data(seed=2)
    stack.reversible = True
    za, lda = stack(x1, c1)
    zb, ldb = stack(x2, c2)
    # backward of the second first, then of the first
    gb = torch.autograd.grad(stack_loss(zb, ldb), [x2, c2, *stack.parameters()])
    ga = torch.autograd.grad(stack_loss(za, lda), [x1, c1, *stack.parameters()])
    stack.reversible = False
    for (x, c), got in (((x1, c1), ga), ((x2, c2), gb)):
        z, ld = stack(x, c)
        ref = torch.autograd.grad(stack_loss(z, ld), [x, c, *stack.parameters()])
        for a, b in zip(got, ref):
            assert_close_rel(a, b, 1e-10)


def test_the_same_output_can_feed_two_losses_and_accumulates():
    stack = make_stack(2, DIM, CTX)
    x, c = _data()
    grads = []
    for rev in (True, False):
        stack.reversible = rev
        stack.zero_grad(set_to_none=True)
        x.grad = c.grad = None
        z, ld = stack(x, c)
        stack_loss(z, ld).backward(retain_graph=True)
        (z.sum() * 3).backward()  # a second backward through the same node
        grads.append([x.grad.clone(), c.grad.clone()] + [p.grad.clone() for p in stack.parameters()])
    for a, b in zip(*grads):
        assert_close_rel(a, b, 1e-10)


def test_forward_without_backward_holds_nothing():
    stack = make_stack(3, DIM, CTX, dropout=0.1)
    x, c = _data()
    z, ld = stack(x, c)
    node = weakref.ref(z.grad_fn)
    zref = weakref.ref(z)
    del z, ld
    # freed by reference counting alone: no cycle, no global registry
    assert zref() is None and node() is None
    gc.collect()
    assert stack.reconstruction_error is None


def test_user_tensors_are_never_freed_or_modified():
    stack = make_stack(3, DIM, CTX)
    x, c = _data()
    x_copy, c_copy = x.detach().clone(), c.detach().clone()
    other = (x * x).sum()  # another node saved x: the stack must not touch its storage
    z, ld = stack(x, c)
    z_copy = z.detach().clone()
    nbytes = x.untyped_storage().nbytes()
    (stack_loss(z, ld) + other).backward()
    assert x.untyped_storage().nbytes() == nbytes
    assert torch.equal(x.detach(), x_copy) and torch.equal(c.detach(), c_copy)
    assert torch.equal(z.detach(), z_copy)


def test_in_place_change_of_a_parameter_before_backward_is_detected():
    stack = make_stack(2, DIM, CTX)
    x, c = _data()
    z, ld = stack(x, c)
    with torch.no_grad():
        next(stack.parameters()).add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        stack_loss(z, ld).backward()


def test_bfloat16_error_is_that_of_plain_bfloat16():
    ref_stack = make_stack(3, 8, CTX, hidden=32, scale=0.1)
    x64, c64 = _data(batch=16, dim=8)
    _, _, g_ref = grads_of(ref_stack, x64, c64, reversible=False)
    stack = make_stack(3, 8, CTX, hidden=32, scale=0.1, dtype=torch.bfloat16)
    x = x64.detach().bfloat16().requires_grad_()
    c = c64.detach().bfloat16().requires_grad_()
    z_r, ld_r, g_r = grads_of(stack, x, c, reversible=True)
    z_p, ld_p, g_p = grads_of(stack, x, c, reversible=False)
    assert z_r.dtype == torch.bfloat16 and ld_r.dtype == torch.float32
    for name, r, rev, plain in zip(["x", "context"] + [n for n, _ in stack.named_parameters()],
                                   g_ref, g_r, g_p):
        scale = r.abs().max().item()
        err_rev = (rev.double() - r).abs().max().item() / scale
        err_plain = (plain.double() - r).abs().max().item() / scale
        # in units of bfloat16's unit roundoff u = 2^-8: plain bf16 autograd is off by up to
        # 6.2u (measured 0.024), the reversible backward (which also rounds each rebuilt input
        # to bf16) by up to 7.2u, and the two differ by up to 3.7u; a wrong rebuild is O(1)
        u = 2.0 ** -8
        err_both = (rev.double() - plain.double()).abs().max().item() / scale
        assert err_plain < 10 * u, (name, err_plain)
        assert err_rev < 10 * u and err_both < 6 * u, (name, err_rev, err_both)


def test_nested_stack_and_generic_layers():
    inner = make_stack(2, DIM, CTX, seed=3)
    outer = InvertibleSequential(make_stack(1, DIM, CTX, seed=4), inner,
                                 Permutation(DIM, seed=1))
    x, c = _data()
    _compare(outer, x, c, 1e-10)



def test_parameters_shared_between_layers_accumulate():
    # the same coupling instance twice (and a shared conditioner): each parameter's gradient
    # is the sum over its uses, returned once
    a = make_stack(1, DIM, CTX, mixing=False, seed=5).layers[0]
    b = make_stack(1, DIM, CTX, mixing=False, seed=6).layers[0]
    b.net = a.net  # both keep the first half: the same conditioner fits
    stack = InvertibleSequential(a, Permutation(DIM, mode="reverse"), a, Permutation(DIM, seed=2),
                                 b).double()
    assert len(list(stack.parameters())) == len(list(a.parameters()))
    x, c = _data()
    _compare(stack, x, c, 1e-10)

def test_empty_stack_is_identity():
    x, c = _data()
    z, ld = InvertibleSequential()(x, c)
    assert z is x and torch.equal(ld, torch.zeros(B, dtype=torch.float64))


def test_reconstruction_drift_of_a_deep_float32_stack():
    dim = 32
    stack = make_stack(64, dim, 4, hidden=32, scale=0.05, dtype=torch.float32, mixing=False,
                       check_reconstruction=True)
    x, c = _data(torch.float32, batch=32, dim=dim, ctx=4)
    z, ld = stack(x, c)
    # non-trivial: the stack moves the data and has a non-zero log-det
    assert (z - x).abs().max() > 1.0 and ld.abs().mean() > 0.5
    stack_loss(z, ld).backward()
    err = stack.reconstruction_error
    assert len(err) == 64 and err[0] > 0  # float32 rebuilding is not exact...
    assert max(err) < 1e-4, max(err)      # ...but the drift stays small over 64 layers
    # and the float32 gradients agree with plain autograd
    _, _, g_r = grads_of(stack, x, c, reversible=True)
    _, _, g_p = grads_of(stack, x, c, reversible=False)
    for a, b in zip(g_r, g_p):
        assert_close_rel(a, b, 1e-4)



def test_autocast_forward_is_replayed_in_the_backward():
    # forward under CPU autocast (bfloat16 conditioners), backward outside it, as in AMP:
    # the recomputation must re-enter autocast or the rebuilt inputs drift by ~5e-2
    stack = make_stack(4, 8, CTX, hidden=32, dtype=torch.float32, check_reconstruction=True)
    x, c = _data(torch.float32, batch=16, dim=8)
    grads = {}
    for rev in (True, False):
        stack.reversible = rev
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z, ld = stack(x, c)
        grads[rev] = torch.autograd.grad(stack_loss(z, ld), [x, c, *stack.parameters()])
    assert max(stack.reconstruction_error) < 1e-4, stack.reconstruction_error
    for a, b in zip(grads[True], grads[False]):
        # the same bf16 matmuls on both sides: only the float32 rebuild (2.7e-6) differs;
        # measured 6.2e-7 (without the replay: ~5e-2)
        assert_close_rel(a, b, 1e-5)


@pytest.mark.cuda
def test_cuda_gradients_and_dropout_replay_match_plain():
    stack = make_stack(3, DIM, CTX, dropout=0.2, hidden=32).cuda()
    x, c = _data()
    x, c = x.detach().cuda().requires_grad_(), c.detach().cuda().requires_grad_()
    _assert_reversible_matches_plain(stack, x, c, seed=7)
