"""Sampling: KV cache, step counts, guidance, trajectories."""
import math

import pytest
import torch
from torch.distributions import Normal

from ntm_engine.models import NTM, guide

from _ntm_testutils import COND_KINDS, condition_of, conditioned_ntm, small_ntm


@pytest.mark.parametrize("kind", COND_KINDS)
@pytest.mark.parametrize("guidance", [0.0, 1.5])
@pytest.mark.parametrize("steps", [None, 2])
def test_kv_cache_matches_full_recompute(guidance, steps, kind):
    """(With condition tokens the cache starts with their prefix.)"""
    model = conditioned_ntm(kind, (1, 4, 4), steps=3, patch_size=2, std=0.2)
    y = condition_of(kind, 4)
    kw = dict(y=y, steps=steps, guidance=guidance, return_trajectory=True)
    x1, X1 = model.sample(4, generator=torch.Generator().manual_seed(0), use_cache=True, **kw)
    x2, X2 = model.sample(4, generator=torch.Generator().manual_seed(0), use_cache=False, **kw)
    assert torch.allclose(x1, x2, rtol=1e-10, atol=1e-10)
    assert torch.allclose(X1, X2, rtol=1e-10, atol=1e-10)


def test_step_counts_and_trajectory():
    model = small_ntm((1, 4, 4), steps=4, patch_size=2, num_classes=0)
    for steps in (1, 2, 4, 8):
        x, X = model.sample(3, steps=steps, generator=torch.Generator().manual_seed(steps),
                            return_trajectory=True)
        assert x.shape == (3, 1, 4, 4) and X.shape == (3, steps + 1, 1, 4, 4)
        assert torch.isfinite(X).all() and torch.equal(X[:, 0], x)
    # the first draw is u_1 ~ N(0, I) from the generator
    g = torch.Generator().manual_seed(9)
    x, X = model.sample(3, generator=g, return_trajectory=True)
    u1 = torch.randn(3, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert torch.allclose(X[:, 4].reshape(3, 16), u1)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampled_steps_follow_the_model(temperature):
    """Re-encoding sampled trajectories gives z = (u - mu)/sig ~ N(0, temperature^2)."""
    model = small_ntm((1, 4, 4), steps=3, patch_size=2, num_classes=3, std=0.2)
    n = 1000
    y = torch.arange(n) % 3
    x, X = model.sample(n, y=y, temperature=temperature, return_trajectory=True,
                        generator=torch.Generator().manual_seed(0))
    t = model.time_grid(n, dtype=torch.float64)
    with torch.no_grad():
        U, _, mu, ls = model.predict_levels(X, t, y)
    z = (U - mu) / ls.exp()                                    # [n, T, D]
    assert z.mean().abs() < 0.02
    assert (z.std(dim=(0, 2)) / temperature - 1).abs().max() < 0.03


def test_exact_gaussian_model_samples_the_data_distribution():
    torch.manual_seed(0)
    m, v = 0.5, 0.2
    model = NTM((2,), steps=3, width=16, depth=1, heads=2, transporter_layers=0,
                data_mean=m, data_std=math.sqrt(v)).double().eval()
    n = 20000
    x, X = model.sample(n, generator=torch.Generator().manual_seed(0), return_trajectory=True)
    t = model.time_grid(1, dtype=torch.float64)[0]
    mean, var = X.mean(0), X.var(0)                            # [T+1, 2]
    for k in range(4):       # every level has the forward marginal N((1-t) m, (1-t)^2 v + t^2)
        vk = (1 - t[k]) ** 2 * v + t[k] ** 2
        assert (mean[k] - (1 - t[k]) * m).abs().max() < 4 * math.sqrt(vk / n)
        assert (var[k] / vk - 1).abs().max() < 0.05


def test_temperature_zero_is_the_mean_path():
    model = small_ntm((4,), steps=3, patch_size=2, num_classes=0)
    a = model.sample(5, temperature=0.0, generator=torch.Generator().manual_seed(0))
    b = model.sample(5, temperature=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    c = model.sample(5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("kind", COND_KINDS)
def test_guidance_zero_is_the_conditional_model(kind):
    model = conditioned_ntm(kind, (1, 4, 4), steps=3, patch_size=2, std=0.2)
    y = condition_of(kind, 3, seed=2)
    a = model.sample(3, y=y, guidance=0.0, generator=torch.Generator().manual_seed(1))
    b = model.sample(3, y=y, guidance=1e-12, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, b, atol=1e-9)                     # two-branch path, w -> 0
    c = model.sample(3, y=y, guidance=3.0, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a, c, atol=1e-3)
    # the conditional model differs from the unconditional one (the condition is used)
    d = model.sample(3, y=None, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a, d, atol=1e-3)


def test_guide_is_the_tilted_gaussian():
    """N_g proportional to N_c^(1+w) / N_u^w when sig_c < sig_u (r < 1, no clipping)."""
    g = torch.Generator().manual_seed(0)
    mu_c, mu_u = torch.randn(2, 50, generator=g, dtype=torch.float64)
    ls_u = torch.rand(50, generator=g, dtype=torch.float64)
    ls_c = ls_u - 0.1 - torch.rand(50, generator=g, dtype=torch.float64)
    w = 2.5
    mu, ls = guide(mu_c, ls_c, mu_u, ls_u, w)
    u1, u2 = torch.randn(2, 50, generator=g, dtype=torch.float64)

    def lp(u, m, s):
        return Normal(m, s.exp()).log_prob(u)
    lhs = lp(u1, mu, ls) - lp(u2, mu, ls)
    rhs = (1 + w) * (lp(u1, mu_c, ls_c) - lp(u2, mu_c, ls_c)) - w * (lp(u1, mu_u, ls_u)
                                                                    - lp(u2, mu_u, ls_u))
    assert torch.allclose(lhs, rhs, atol=1e-10)
    m0, l0 = guide(mu_c, ls_c, mu_u, ls_u, 0.0)
    assert torch.equal(m0, mu_c) and torch.equal(l0, ls_c)
    # r clipped at 1 when sig_c > sig_u: the scale is left as sig_c
    _, l1 = guide(mu_c, ls_u + 0.5, mu_u, ls_u, w)
    assert torch.allclose(l1, ls_u + 0.5)
    assert math.isfinite(float(mu.sum()))
