"""A few training steps of the digits NTM on the GPU against the same steps on the CPU (float32
and bf16 autocast), and a checkpoint round trip of the GPU model.  Needs a GPU (marker
``cuda``).

Both devices see the same trajectories (drawn on the CPU) and start from the same weights, so
they differ only by the devices' rounding (different matmul and reduction orders, the fused
ops' summation orders): float32 losses within 1e-4 relative over three AdamW steps and the
first gradients within 1e-4 in norm, bf16 autocast losses within 2 bf16 ulps (2^-7)."""
from __future__ import annotations

import copy

import pytest
import torch

from ntm_engine.checkpoint import load_checkpoint, save_checkpoint
from ntm_engine.models import NTM
from ntm_engine.training.precision import autocast

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

STEPS = 3
TOLERANCE = {"fp32": 1e-4, "bf16": 2 * 2.0**-7}


def _model():
    torch.manual_seed(0)
    return NTM.for_digits(width=32, depth=1, heads=2, transporter_hidden=32,
                          transporter_layers=2).train()


def _batches():
    g = torch.Generator().manual_seed(1)
    draw = _model()
    out = []
    for _ in range(STEPS):
        x = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
        y = torch.randint(10, (16,), generator=g)
        X, t = draw.forward_trajectory(x, generator=g)
        out.append((X, t, y))
    return out


def _train(model, batches, device, precision):
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for X, t, y in batches:
        with autocast(precision, device):
            loss = -model.trajectory_log_prob(X.to(device), t.to(device), y.to(device)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach().float().cpu())
    return torch.stack(losses), model


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_steps_match_cpu_steps(precision):
    batches = _batches()
    model = _model()
    cpu_losses, _ = _train(copy.deepcopy(model), batches, "cpu", precision)
    gpu_losses, _ = _train(copy.deepcopy(model), batches, "cuda", precision)
    assert torch.isfinite(gpu_losses).all()
    torch.testing.assert_close(gpu_losses, cpu_losses, rtol=TOLERANCE[precision], atol=0)


def test_gpu_gradients_match_cpu_gradients():
    """The first step's gradients, tensor by tensor in norm (after it, Adam's first update is
    about lr * sign(grad), which amplifies rounding in near-zero gradients)."""
    X, t, y = _batches()[0]
    grads = {}
    for device in ("cpu", "cuda"):
        model = _model().to(device)
        (-model.trajectory_log_prob(X.to(device), t.to(device), y.to(device)).mean()).backward()
        grads[device] = {n: p.grad.detach().cpu() for n, p in model.named_parameters()
                         if p.grad is not None}
    assert grads["cpu"].keys() == grads["cuda"].keys()
    for name, want in grads["cpu"].items():
        err = (grads["cuda"][name] - want).norm().item()
        assert err <= TOLERANCE["fp32"] * want.norm().item() + 1e-30, f"{name}: {err:.3g}"


def test_checkpoint_round_trip_on_gpu(tmp_path):
    batches = _batches()
    _, model = _train(_model(), batches, "cuda", "fp32")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = save_checkpoint(tmp_path, STEPS, state, None, {"config": {}, "step": STEPS})
    restored = _model()
    restored.load_state_dict(load_checkpoint(path).model)
    restored = restored.cuda().eval()
    model.eval()
    X, t, y = (a.cuda() for a in batches[0])
    with torch.no_grad():
        assert torch.equal(restored.trajectory_log_prob(X, t, y),
                           model.trajectory_log_prob(X, t, y))
