"""The training step and the sampling step trace as one graph (``torch.compile``).

A graph break in ``trajectory_nll`` is either a host sync (a tensor value read in Python, e.g.
``.item()`` in a check) or an untraceable call (``torch.autograd.grad`` inside the reversible
Function's backward); both once broke the digits model into 12 graphs.  Zero graph breaks
under ``torch._dynamo.explain`` is the CPU check for "no host sync in a training step".

Compiling with inductor takes one to two minutes on two shared cores, so only one test does
(the coupling transporter, float32, the training dtype); both transporters go through dynamo
and AOTAutograd (``backend="aot_eager"``, no code generation) in float64.
"""
from __future__ import annotations

import pytest
import torch

from ntm_engine.models import NTM, schedule
from ntm_engine.nn import InvertibleSequential

KINDS = ("coupling", "autoregressive")
# (trained step counts, batch): one T, and several with unequal groups (sizes 3, 2, 2: the
# weights 7/9, 7/6, 7/6 take part)
STEPS = {"one_T": (4, 6), "T_2_4_8": ((2, 4, 8), 7)}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(kind: str, dtype=torch.float32, steps=4) -> NTM:
    """A small digits NTM trained on ``steps``, in training mode, whose transporter is not the
    identity (so its gradients and log-dets take part)."""
    torch.manual_seed(0)
    model = NTM.for_digits(transporter=kind, width=32, depth=1, heads=2, steps=steps,
                           transporter_hidden=32, transporter_layers=2).to(dtype)
    with torch.no_grad():
        for p in model.transporter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.train()


def _batch(dtype=torch.float32, n: int = 6):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(n, 1, 8, 8, generator=g, dtype=dtype) * 2 - 1,
            torch.randint(10, (n,), generator=g))


def _loss_and_grads(model: NTM, fn, x, y, *, seed: int = 3):
    """``fn(x, y)`` (per-sample losses) and the parameter gradients of their sum, the random
    draws coming from the global RNG seeded with ``seed``."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = fn(x, y)
    loss.sum().backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_close_to(got, want, *, rtol: float) -> None:
    """Each tensor of ``got`` within ``rtol`` times the largest magnitude of its ``want``."""
    for name, (a, b) in enumerate(zip(got, want)):
        scale = b.abs().max().item()
        err = (a - b).abs().max().item()
        assert err <= rtol * scale, f"tensor {name}: max |diff| {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("kind", KINDS)
def test_training_step_has_no_graph_break(kind, steps):
    """Also with several step counts: the groups have static sizes (no ``nonzero``)."""
    counts, n = STEPS[steps]
    model = _model(kind, steps=counts)
    assert model.transporter.flow.reversible
    x, y = _batch(n=n)
    explained = torch._dynamo.explain(model.trajectory_nll)(x, y)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("t_min", [0.25, -0.01, torch.tensor([0.0, 0.25]),
                                   torch.tensor([-1e-3, 0.1])])
def test_time_grid_still_rejects_a_bad_t_min_in_eager(t_min):
    """The check that left the compiled path still runs in eager mode (4 steps, shift 1:
    ``t_1 = 0.25``); ``validate=False`` (the model's own draw) skips it."""
    with pytest.raises(ValueError, match=r"t_min must lie in \[0, t_1 = 0.25\) for 4 steps"):
        schedule.time_grid(2, 4, 1.0, t_min)
    t = schedule.time_grid(2, 4, 1.0, t_min, validate=False)
    assert torch.equal(t[:, 0], torch.as_tensor(t_min, dtype=t.dtype).expand(2))


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_step_has_no_graph_break(kind):
    """One cached reverse step (predictor step, noise, new level), first and later, and the
    decoder (the transporter inverse) each trace as one graph."""
    model = _model(kind).eval()
    n = 3
    t = model.time_grid(n)
    y = torch.tensor([0, 4, 9])

    def step(u, t_lo, t_hi, labels, cache):
        mu, log_sigma, cache = model.predictor.step(u, t_lo, t_hi, labels, cache)
        return mu + torch.exp(log_sigma) * torch.randn_like(mu), cache

    with torch.no_grad():
        u1 = torch.randn(n, model.dim)
        _, cache = step(u1, t[:, 3], t[:, 4], y, None)
        for k, past in ((3, None), (2, cache)):
            explained = torch._dynamo.explain(step)(u1, t[:, k], t[:, k + 1], y, past)
            assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
        explained = torch._dynamo.explain(model.transport_inverse)(u1, t[:, 0], y)
        assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]


def test_condition_tokens_add_no_graph_break():
    """A training step and cached sampling steps with condition tokens (a padding mask, the
    prefix in the cache) still trace as one graph each."""
    from ntm_engine.condition import Condition

    torch.manual_seed(0)
    model = NTM.for_digits(conditional=False, cond_dim=6, steps=4, width=32, depth=1, heads=2,
                           transporter_hidden=32, transporter_layers=2).train()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    c = Condition(None, torch.randn(6, 3, 6, generator=g), torch.rand(6, 3, generator=g) > 0.3)
    explained = torch._dynamo.explain(model.trajectory_nll)(x, c)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1
    model.eval()
    t = model.time_grid(6)

    def step(u, t_lo, t_hi, cond, cache):
        mu, log_sigma, cache = model.predictor.step(u, t_lo, t_hi, cond, cache)
        return mu + torch.exp(log_sigma) * torch.randn_like(mu), cache

    with torch.no_grad():
        u1 = torch.randn(6, model.dim)
        _, cache = step(u1, t[:, 3], t[:, 4], c, None)
        for k, past in ((3, None), (2, cache)):
            explained = torch._dynamo.explain(step)(u1, t[:, k], t[:, k + 1], c, past)
            assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]


@pytest.mark.parametrize("kind", KINDS)
def test_recomputed_stack_equals_reversible_function(kind):
    """The compile-time path of a reversible stack (a checkpoint of the plain layers) gives
    the eager reversible Function's outputs and gradients (float64, eager)."""
    stack = _model(kind, torch.float64).transporter.flow
    assert isinstance(stack, InvertibleSequential)
    torch.manual_seed(5)
    first = stack.layers[0]
    shape = (first.dim,) if kind == "coupling" else (first.tokens, first.patch_dim)
    x = torch.randn(7, *shape, dtype=torch.float64)
    ctx = torch.randn(7, 64, dtype=torch.float64, requires_grad=True)
    weights = torch.randn_like(x)

    def run(fn):
        stack.zero_grad(set_to_none=True)
        xin = x.clone().requires_grad_()
        ctx.grad = None
        u, logdet = fn(xin, ctx)
        ((u * weights).sum() + logdet.pow(2).sum()).backward()
        return [u.detach(), logdet.detach(), xin.grad, ctx.grad,
                *(p.grad for p in stack.parameters())]

    want = run(stack)                      # the reversible Function (eager)
    got = run(stack._recomputed)
    _assert_close_to(got, want, rtol=1e-12)


@pytest.mark.slow
def test_compiled_training_step_equals_eager_coupling():
    """``torch.compile(model.trajectory_nll, fullgraph=True)`` (inductor, random ops drawn as
    in eager) gives eager's per-sample losses and gradients in float32.  Tolerances, relative
    to each tensor's largest magnitude: 1e-6 on the losses, 1e-4 on the gradients.  The traced
    graphs themselves match eager to ~3e-7 (:func:`test_traced_training_step_equals_eager`
    checks them in float64); inductor's generated code (vectorised exp/tanh, reordered sums
    of up to ~10^3 terms) moves float32 gradients by ~3e-5 of their scale (measured)."""
    model = _model("coupling")
    x, y = _batch()
    want = _loss_and_grads(model, model.trajectory_nll, x, y)
    compiled = torch.compile(model.trajectory_nll, fullgraph=True)
    with torch._inductor.config.patch(fallback_random=True):
        got = _loss_and_grads(model, compiled, x, y)
    _assert_close_to([got[0]], [want[0]], rtol=1e-6)
    _assert_close_to(got[1], want[1], rtol=1e-4)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("kind", KINDS)
def test_traced_training_step_equals_eager(kind, steps):
    """The step through dynamo and AOTAutograd (``aot_eager``: the traced forward and backward
    graphs, no code generation; the transporter as a checkpoint) gives the eager reversible
    step's losses and gradients in float64, with one step count or several."""
    counts, n = STEPS[steps]
    model = _model(kind, torch.float64, steps=counts)
    x, y = _batch(torch.float64, n=n)
    want = _loss_and_grads(model, model.trajectory_nll, x, y)
    traced = torch.compile(model.trajectory_nll, fullgraph=True, backend="aot_eager")
    got = _loss_and_grads(model, traced, x, y)
    _assert_close_to([got[0]], [want[0]], rtol=1e-12)
    _assert_close_to(got[1], want[1], rtol=1e-9)
