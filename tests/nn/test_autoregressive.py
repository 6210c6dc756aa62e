"""AutoregressiveFlowBlock: exact inverses, log-det, causality, reversible gradients, errors."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from ntm_engine.nn import AutoregressiveFlowBlock, autoregressive_stack, decode
from ntm_engine.nn.base import generic_reverse_step
from stack_factory import assert_close_rel

B, L, P, CTX = 3, 5, 3, 4


def _perturbed(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (the zero-initialised head and adaLN included), float64."""
    module = module.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def _stack(blocks: int = 2, context_dim: int = CTX, reversible: bool = True, seed: int = 0,
           tokens: int = L, patch_dim: int = P):
    torch.manual_seed(seed)
    stack = autoregressive_stack(tokens, patch_dim, blocks, context_dim=context_dim, width=16,
                                 depth=2, heads=2, reversible=reversible)
    return _perturbed(stack, seed=seed)


def _block(reverse: bool = False, context_dim: int = CTX, seed: int = 0):
    torch.manual_seed(seed)
    block = AutoregressiveFlowBlock(L, P, context_dim=context_dim, width=16, depth=2, heads=2,
                                    reverse=reverse)
    return _perturbed(block, seed=seed)


def _data(seed: int = 1, batch: int = B, tokens: int = L, patch_dim: int = P, ctx: int = CTX):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, patch_dim, generator=g, dtype=torch.float64)
    c = torch.randn(batch, ctx, generator=g, dtype=torch.float64) if ctx else None
    return x, c


def _naive_inverse(block: AutoregressiveFlowBlock, y, context):
    """Token by token with a full conditioner pass per token (no cache): O(L^2) work."""
    ys = block._scan(y)
    xs = torch.zeros_like(ys)
    for i in range(ys.shape[1]):
        shift, logits = block.conditioner(xs, context)
        s = block.clamp * torch.tanh(logits[:, i] / block.clamp)
        xs = xs.clone()
        xs[:, i] = (ys[:, i] - shift[:, i]) * torch.exp(-s)
    return block._scan(xs)


def test_new_block_is_the_identity():
    block = AutoregressiveFlowBlock(L, P, context_dim=CTX, width=16, heads=2).double()
    x, c = _data()
    y, logdet = block(x, c)
    assert torch.equal(y, x)
    assert torch.equal(logdet, torch.zeros(B, dtype=torch.float64))


@pytest.mark.parametrize("context_dim", [0, CTX])
def test_round_trip_float64(context_dim):
    stack = _stack(3, context_dim)
    x, c = _data(ctx=context_dim)
    with torch.no_grad():
        z, logdet = stack(x, c)
        x_back, logdet_inv = stack.inverse(z, c)
    assert (z - x).abs().max() > 0.1                    # not the identity
    assert (x_back - x).abs().max() <= 1e-10
    assert (logdet + logdet_inv).abs().max() <= 1e-10
    assert logdet.abs().min() > 1e-3


@pytest.mark.parametrize("reverse", [False, True])
def test_kv_cache_inverse_equals_naive_inverse(reverse):
    block = _block(reverse)
    x, c = _data()
    with torch.no_grad():
        y, _ = block(x, c)
        kv, _ = block.inverse(y, c, fused=False)
        naive = _naive_inverse(block, y, c)
    assert (kv - naive).abs().max() <= 1e-12
    assert (kv - x).abs().max() <= 1e-10
    # with autograd the cache concatenates instead of writing in place: same values, and the
    # inverse is differentiable
    y_in = y.clone().requires_grad_()
    kv_grad, logdet_inv = block.inverse(y_in, c)
    assert kv_grad.grad_fn is not None     # the Python loop ran: the fused op has no gradient
    assert torch.equal(kv_grad, kv)
    (kv_grad.sum() + logdet_inv.sum()).backward()
    assert y_in.grad is not None and torch.isfinite(y_in.grad).all()


def test_jacobi_converges_to_the_exact_inverse_and_reports():
    stack = _stack(2)
    x, c = _data()
    with torch.no_grad():
        z, _ = stack(x, c)
        exact, ld_exact, none = decode(stack, z, c, method="kv")
        jac, ld_jac, reports = decode(stack, z, c, method="jacobi", tol=0.0)
        _, _, capped = decode(stack, z, c, method="jacobi", tol=0.0, max_iters=2)
    assert none == []
    assert (jac - exact).abs().max() <= 1e-12
    assert (ld_jac - ld_exact).abs().max() <= 1e-12
    assert len(reports) == 2
    assert all(r.converged and r.residual == 0.0 and r.iterations <= L + 1 for r in reports)
    assert all(not r.converged and r.residual > 1e-3 and r.iterations == 2 for r in capped)


def test_logdet_equals_slogdet_of_the_jacobian():
    stack = _stack(3, tokens=4, patch_dim=4)   # a 1x4x4 image in 2x2 patches
    x, c = _data(batch=2, tokens=4, patch_dim=4)
    with torch.no_grad():
        _, logdet = stack(x, c)
    for b in range(2):
        f = lambda v: stack(v.view(1, 4, 4), c[b:b + 1])[0].flatten()  # noqa: E731
        J = jacobian(f, x[b].flatten())
        assert abs(torch.linalg.slogdet(J).logabsdet - logdet[b]) <= 1e-10


@pytest.mark.parametrize("reverse", [False, True])
def test_causality_in_scan_order(reverse):
    block = _block(reverse)
    x, c = _data()
    with torch.no_grad():
        y, _ = block(x, c)
        for j in range(L):
            x2 = x.clone()
            x2[:, j] += 1.0
            y2, _ = block(x2, c)
            changed = (y2 - y).abs().amax(dim=(0, 2)) > 0        # per natural token
            scan = list(range(L))[::-1] if reverse else list(range(L))
            pos = scan.index(j)
            assert not changed[scan[:pos]].any(), (j, changed)    # tokens before j: untouched
            assert changed[scan[pos:]].all(), (j, changed)        # j and after: changed


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("mode", [True, "recompute"], ids=["inverse", "recompute"])
def test_reversible_gradients_equal_plain_autograd(depth, mode):
    stack = _stack(depth)
    x, c = _data()
    results = []
    for reversible in (mode, False):
        stack.reversible = reversible
        stack.zero_grad(set_to_none=True)
        xi, ci = x.clone().requires_grad_(), c.clone().requires_grad_()
        z, logdet = stack(xi, ci)
        w = torch.linspace(0.5, 1.5, B, dtype=torch.float64)
        ((0.5 * z.pow(2).sum((1, 2)) - logdet) * w).sum().backward()
        results.append([xi.grad, ci.grad] + [p.grad for p in stack.parameters()])
        if reversible is True:
            assert type(z.grad_fn).__name__ == "_ReversibleStackBackward"
    names = ["x", "context"] + [n for n, _ in stack.named_parameters()]
    for name, a, b in zip(names, *results):
        assert a is not None and b is not None, name
        assert_close_rel(a, b, 1e-8, name)


def test_the_recompute_backward_never_decodes(monkeypatch):
    """``reversible="recompute"`` keeps each block's input and re-runs its parallel forward:
    neither the token-by-token inverse nor the reverse step runs in the backward."""
    stack = _stack(3, reversible="recompute")

    def refuse(*args, **kwargs):
        raise AssertionError("the recompute backward must not invert a block")

    monkeypatch.setattr(AutoregressiveFlowBlock, "inverse", refuse)
    monkeypatch.setattr(AutoregressiveFlowBlock, "reverse_step", refuse)
    x, c = _data()
    z, logdet = stack(x.clone().requires_grad_(), c)
    (z.pow(2).sum() - logdet.sum()).backward()
    assert all(p.grad is not None for p in stack.parameters())
    with pytest.raises(ValueError, match="reversible must be one of"):
        autoregressive_stack(L, P, 1, reversible="sometimes")


def test_reverse_step_matches_the_generic_one():
    block = _block(reverse=True)
    x, c = _data()
    with torch.no_grad():
        y, _ = block(x, c)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gl = torch.linspace(-1, 1, B, dtype=torch.float64)
    c = c.requires_grad_()
    fast = block.reverse_step(y, g, gl, c)
    slow = generic_reverse_step(block, y, g, gl, c)
    for a, b in zip(fast[:3], slow[:3]):
        assert_close_rel(a, b, 1e-10)
    for a, b in zip(fast[3], slow[3]):
        assert_close_rel(a, b, 1e-10)


def test_reversible_stack_saves_no_activations():
    """Bytes autograd saves for the reversible stack do not grow with depth."""
    x, c = _data()
    held = []
    for depth in (1, 4):
        stack = _stack(depth)
        ptrs = {}

        def pack(t):
            ptrs[t.untyped_storage().data_ptr()] = t.untyped_storage()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            stack(x.clone().requires_grad_(), c)
        params = {p.untyped_storage().data_ptr() for p in stack.parameters()}
        held.append(sum(s.nbytes() for k, s in ptrs.items() if k not in params))
    assert held[0] == held[1] == x.numel() * 8 + c.numel() * 8, held   # output and context


def test_bad_input_names_the_argument():
    block = _block()
    x, c = _data()
    with pytest.raises(ValueError, match=r"'x' must have shape \[B, 5, 3\], got \[3, 5, 4\]"):
        block(torch.zeros(B, L, 4, dtype=torch.float64), c)
    with pytest.raises(TypeError, match=r"'x' must have dtype torch.float64.*got torch.float32"):
        block(x.float(), c)
    with pytest.raises(ValueError, match=r"'y' must be on cpu.*got meta"):
        block.inverse(torch.empty(B, L, P, dtype=torch.float64, device="meta"), c)
    with pytest.raises(ValueError, match=r"'context' must have shape \[3, 4\], got None"):
        block(x, None)
    with pytest.raises(ValueError, match="max_iters must be a positive int, got 0"):
        block.jacobi_inverse(x, c, max_iters=0)
    with pytest.raises(ValueError, match="method must be 'kv' or 'jacobi', got 'gauss'"):
        decode([block], x, c, method="gauss")
    with pytest.raises(ValueError, match="width 10 must be divisible by heads 4"):
        AutoregressiveFlowBlock(L, P, width=10, heads=4)
