"""The importance-weighted likelihood bound over K forward trajectories."""
import math

import pytest
import torch

from ntm_engine.models import NTM, schedule
from ntm_engine.models.likelihood import log_likelihood_bound

from _ntm_testutils import perturb


def gaussian_model(m, v, dim=3, steps=4):
    torch.manual_seed(0)
    return NTM((dim,), steps=steps, width=16, depth=1, heads=2, transporter_layers=0,
               shift=1.5, data_mean=m, data_std=math.sqrt(v)).double().eval()


@pytest.mark.parametrize("K", [2, 8])
def test_exact_when_q_is_the_models_posterior(K):
    """Gaussian data model, identity transporter: p(X) / q(X | x) = p(x) for every X."""
    m, v, D = 0.3, 0.4, 3
    model = gaussian_model(m, v, dim=D)
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        bpd = model.bits_per_dim(x, bins=2, samples=K,
                                 generator=torch.Generator().manual_seed(1))
    log_px = torch.distributions.Normal(m, math.sqrt(v)).log_prob(x).sum(1)
    assert torch.allclose(bpd, -log_px / (D * math.log(2)), atol=1e-10)
    with torch.no_grad():
        one = model.bits_per_dim(x, bins=2, generator=torch.Generator().manual_seed(1))
    assert (one - bpd).abs().max() > 1e-3      # the one-trajectory bound is not exact per x


def perturbed_model():
    torch.manual_seed(0)
    model = NTM((1, 4, 4), steps=3, width=32, depth=1, heads=2, patch_size=2,
                transporter_layers=2, transporter_hidden=16, context_dim=16, data_std=0.8)
    return perturb(model.double(), std=0.15, seed=2).eval()


def test_is_the_logsumexp_of_the_weights():
    model = perturbed_model()
    x = torch.randn(30, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        bound = log_likelihood_bound(model, x, samples=5,
                                     generator=torch.Generator().manual_seed(3))
        g = torch.Generator().manual_seed(3)
        log_w = []
        for _ in range(5):
            X, t = model.forward_trajectory(x, g, t_min=0.0)
            log_w.append(model.trajectory_log_prob(X, t)
                         - schedule.forward_log_prob(X.reshape(30, 4, 16), t))
        log_w = torch.stack(log_w, 1)
    assert torch.allclose(bound, torch.logsumexp(log_w, 1) - math.log(5), rtol=1e-12)
    assert (bound >= log_w.mean(1)).all() and (bound - log_w.mean(1)).max() > 1e-3  # Jensen


def test_forward_log_prob_has_mean_minus_entropy():
    t = schedule.time_grid(4000, 4, 2.0, 0.0, dtype=torch.float64)
    x = torch.randn(4000, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    X = schedule.forward_trajectory(x, t, torch.Generator().manual_seed(1))
    lq = schedule.forward_log_prob(X, t)
    H = schedule.forward_entropy(t, 5)
    assert abs((lq + H).mean().item()) < 4 * lq.std().item() / math.sqrt(4000)
    assert lq.std() > 0.5


def test_decreases_in_K_and_stays_below_one_trajectory():
    model = perturbed_model()
    x = torch.randn(400, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        bpd = {K: model.bits_per_dim(x, bins=17, samples=K,
                                     generator=torch.Generator().manual_seed(7))
               for K in (1, 4, 16)}
    means = [bpd[K].mean().item() for K in (1, 4, 16)]
    assert means[0] > means[1] > means[2], means
    gain = bpd[1] - bpd[16]                       # never above in expectation: a clear gain
    assert gain.mean() > 4 * gain.std() / math.sqrt(len(gain)), (gain.mean(), gain.std())
    with pytest.raises(ValueError, match="samples"):
        model.bits_per_dim(x, samples=0)


def bin_centres(n, dim, bins, seed=0):
    """``[n, dim]`` random centres of the ``bins`` bins of width ``2 / bins`` on [-1, 1]."""
    k = torch.randint(0, bins, (n, dim), generator=torch.Generator().manual_seed(seed))
    return (k.double() + 0.5) * (2 / bins) - 1


def test_importance_sampled_dequantisation_tends_to_the_discrete_bits_per_dim():
    """Gaussian data model, identity transporter: the joint bound over (noise, trajectory)
    is the importance-sampled ``log E_u p(x + u)``, which tends to ``log P(bin)``; the noise
    fixed per point bounds ``log p(x + u)`` instead, off by the Jensen gap whatever K."""
    m, v, D, bins = 0.3, 0.4, 3, 4
    model, w = gaussian_model(m, v, dim=D), 2 / bins
    x = bin_centres(20, D, bins)
    normal = torch.distributions.Normal(m, math.sqrt(v))
    exact = -(normal.cdf(x + w / 2) - normal.cdf(x - w / 2)).log().sum(1) / (D * math.log(2))
    with torch.no_grad():
        joint = model.bits_per_dim(x, bins=bins, samples=2048, dequantize=True,
                                   generator=torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(1)
        fixed = model.bits_per_dim(x + (torch.rand(x.shape, generator=g, dtype=x.dtype) - 0.5) * w,
                                   bins=bins, samples=2048, generator=g)
    assert (joint - exact).abs().max() < 0.03          # observed 0.009
    assert abs((joint - exact).mean()) < 0.005
    assert (fixed - exact).mean() > 0.04               # the Jensen gap: 0.066 here
    assert (fixed - exact).abs().max() > 0.2


def test_one_trajectory_dequantised_inside_equals_dequantised_first():
    model = perturbed_model()
    x = bin_centres(30, 16, 17).view(30, 1, 4, 4)
    with torch.no_grad():
        inside = model.bits_per_dim(x, bins=17, dequantize=True,
                                    generator=torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)
        first = model.bits_per_dim(x + (torch.rand(x.shape, generator=g, dtype=x.dtype) - 0.5)
                                   * (2 / 17), bins=17, generator=g)
    assert torch.equal(inside, first)
