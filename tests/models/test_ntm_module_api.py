"""The NTM as a normal ``nn.Module``: ``forward`` is the training loss, ``log_prob`` the
likelihood bound, and both agree with the functions they stand for."""
import math

import pytest
import torch

from ntm_engine.models import NTM
from ntm_engine.models.likelihood import log_likelihood_bound
from ntm_engine.models.loss import trajectory_nll

from _ntm_testutils import small_ntm


@pytest.mark.parametrize("steps", [3, (2, 4)])
def test_forward_is_the_per_sample_training_loss(steps):
    model = small_ntm(steps=steps).train()
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(x, y, torch.Generator().manual_seed(3))
    ref = trajectory_nll(model, x, y, torch.Generator().manual_seed(3))
    assert out.shape == (6,)
    assert torch.equal(out, ref)
    # the same draws give the same value through the old name
    assert torch.equal(model.trajectory_nll(x, y, torch.Generator().manual_seed(3)), out)


def test_forward_hooks_see_the_call():
    """A module hook (what DDP, Lightning and accelerate rely on) fires on ``model(x)``."""
    model = small_ntm()
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    model(torch.randn(4, 1, 4, 4, dtype=torch.float64))
    assert seen == [torch.Size([4])]


@pytest.mark.parametrize("samples", [1, 4])
def test_log_prob_is_the_bound_and_matches_bits_per_dim(samples):
    model = small_ntm()
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    lp = model.log_prob(x, y, samples, generator=torch.Generator().manual_seed(1))
    ref = log_likelihood_bound(model, x, y, samples=samples,
                               generator=torch.Generator().manual_seed(1))
    assert torch.equal(lp, ref)
    bpd = model.bits_per_dim(x, y, bins=17, samples=samples,
                             generator=torch.Generator().manual_seed(1))
    # bits/dim = -log p / (D ln 2) + log2(bins / 2), exactly, in float64
    torch.testing.assert_close(bpd, -lp / (model.dim * math.log(2)) + math.log2(17 / 2),
                               rtol=0, atol=1e-12)


def test_log_prob_is_differentiable_in_x():
    """The score of the bound: autograd's gradient matches central differences (float64)."""
    model = small_ntm()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)

    def f(v):
        return model.log_prob(v, None, 2, generator=torch.Generator().manual_seed(0)).sum()

    (g,) = torch.autograd.grad(f(x), x)
    e = torch.zeros_like(x)
    e[1, 0, 2, 3] = 1e-6
    fd = (f(x.detach() + e) - f(x.detach() - e)) / 2e-6
    assert abs(g[1, 0, 2, 3].item() - fd.item()) < 1e-6 * max(1.0, abs(fd.item()))
    assert g.abs().sum() > 0


def test_log_prob_refuses_data_of_another_shape():
    model = NTM((2,), steps=2, width=16, depth=1, heads=2, transporter_layers=1)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\], got \[3, 4\]"):
        model.log_prob(torch.randn(3, 4))
