"""Shared helpers for the op tests: input factories and the flash-attention error rule."""
from __future__ import annotations

import contextlib

import torch

import ntm_engine
from ntm_engine import ops
from ntm_engine import reference as R

OPS = ("affine_coupling", "affine_coupling_inverse", "gaussian_nll")
LOW_PRECISION = (torch.float32, torch.bfloat16, torch.float16)
# The CPU kernel variants this machine can run (each is tested against the twin).
SUPPORTED_CAPABILITIES = tuple(ntm_engine.build_info()["cpu_capabilities_supported"])


@contextlib.contextmanager
def using_capability(level):
    """Runs the body with the CPU kernels of ``level``, then restores the previous choice."""
    before = ntm_engine.build_info()["cpu_capability"]
    ops.set_cpu_capability(level)
    try:
        yield
    finally:
        ops.set_cpu_capability(before)


def make_inputs(shape, dtype=torch.float32, device="cpu", seed=0, scale=1.0):
    """Three same-shape tensors (data, shift/mean, logits/log_sigma) of moderate range."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    b = torch.randn(shape, generator=g, dtype=torch.float64)
    c = scale * torch.randn(shape, generator=g, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (a, b, c)]


def max_err(out, truth):
    return (out.double() - truth.double()).abs().max().item() if out.numel() else 0.0


def assert_within_twice_twin(fused, twin, truth, dtype, what=""):
    """flash-attention rule: |fused - truth| <= 2 |twin - truth| + a floor of a few ulps.

    ``truth`` is the twin evaluated in float64 on the same (rounded) inputs.  The floor,
    2 ulps of the output dtype at the scale of the result, keeps a twin that happens to be
    exact from demanding the impossible.
    """
    for f, t, ref in zip(fused, twin, truth):
        scale = ref.double().abs().max().item() if ref.numel() else 0.0
        out_dtype = f.dtype
        floor = 2 * torch.finfo(out_dtype).eps * max(scale, 1.0)
        e_f, e_t = max_err(f, ref), max_err(t, ref)
        assert e_f <= 2 * e_t + floor, f"{what} {dtype}: fused err {e_f:.3g} > 2 x twin err {e_t:.3g} + {floor:.3g}"


def twin(op_name):
    return getattr(R, op_name)


def assert_compiled_matches_eager(shape, device="cpu"):
    """``torch.compile(fullgraph=True)`` of a coupling + Gaussian-NLL loss traces the ops
    without a graph break and gives the eager loss and gradients."""
    def loss_fn(x, shift, logits, mean, log_sigma):
        y, ld = ops.affine_coupling(x, shift, logits, 2.0)
        return (ops.gaussian_nll(y, mean, log_sigma) - ld).sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    x, shift, logits = make_inputs(shape, torch.float32, device=device)
    mean, log_sigma = make_inputs(shape, torch.float32, device=device, seed=9)[:2]
    leaves = [t.requires_grad_() for t in (x, shift, logits, mean, log_sigma)]
    eager = loss_fn(*leaves)
    eager_grads = torch.autograd.grad(eager, leaves)
    out = compiled(*leaves)
    torch.testing.assert_close(out, eager)
    for a, b in zip(torch.autograd.grad(out, leaves), eager_grads):
        torch.testing.assert_close(a, b)


def assert_lean_backward_writes_only_the_rest(y, shift, logits, grad_y, grad_logdet, clamp):
    """The backward op with ``need_x=False, need_grad_shift=False`` leaves those two outputs
    empty and writes the other two exactly as the full call does (whose ``grad_shift`` is
    ``grad_y``)."""
    op = torch.ops.ntm.affine_coupling_backward
    full = op(y, shift, logits, grad_y, grad_logdet, clamp)
    lean = op(y, shift, logits, grad_y, grad_logdet, clamp, need_x=False, need_grad_shift=False)
    assert lean[0].shape == (0,) and lean[2].shape == (0,)
    assert torch.equal(lean[1], full[1]) and torch.equal(lean[3], full[3])
    assert torch.equal(full[2], grad_y)
