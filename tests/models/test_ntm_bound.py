"""Bits/dim constants on a closed-form case, and the bound is a sub-normalised density."""
import math

import pytest
import torch

from ntm_engine.models import NTM

from _ntm_testutils import joint_covariance, perturb


def gaussian_model(m, v, steps=4, shift=1.0, dim=3, **norm):
    """Identity transporter + new predictor = the exact reverse process of N(m, v I) data (in
    the model's space: ``norm`` = channel_mean/channel_scale maps the data there first)."""
    torch.manual_seed(0)
    model = NTM((dim,), steps=steps, width=16, depth=1, heads=2, transporter_layers=0,
                shift=shift, data_mean=m, data_std=math.sqrt(v), **norm)
    return model.double().eval()


def test_predictor_starts_as_the_optimal_gaussian_reverse_process():
    m, v = 0.7, 0.3
    model = gaussian_model(m, v, steps=4, shift=2.0)
    g = torch.Generator().manual_seed(0)
    x = m + math.sqrt(v) * torch.randn(6, 3, generator=g, dtype=torch.float64)
    X, t = model.forward_trajectory(x, generator=g, t_min=0.03)
    with torch.no_grad():
        U, logdet, mu, ls = model.predict_levels(X, t)
    assert torch.equal(U, X[:, :4]) and torch.equal(logdet, torch.zeros_like(logdet))
    tt = t[0]
    C = joint_covariance(tt, v)
    mean = (1 - tt) * m
    for k in range(4):                    # q(x_{t_k} | x_{t_{k+1}}, ..., x_{t_T}) by Schur
        rest = list(range(k + 1, 5))
        W = torch.linalg.solve(C[rest][:, rest], C[rest, k])
        cond_mean = mean[k] + torch.einsum("r,brd->bd", W, X[:, rest] - mean[rest].view(1, -1, 1))
        cond_var = C[k, k] - C[k, rest] @ W
        assert torch.allclose(mu[:, k], cond_mean, atol=1e-12)
        assert torch.allclose(ls[:, k], 0.5 * torch.log(cond_var).expand_as(ls[:, k]), atol=1e-12)


def test_bits_per_dim_matches_closed_form_for_gaussian_data():
    m, v, D = -0.4, 0.5, 3
    model = gaussian_model(m, v, steps=4, dim=D)
    n = 20000
    g = torch.Generator().manual_seed(1)
    x = m + math.sqrt(v) * torch.randn(n, D, generator=g, dtype=torch.float64)
    with torch.no_grad():
        bpd = model.bits_per_dim(x, bins=2, generator=torch.Generator().manual_seed(2))
        bpd17 = model.bits_per_dim(x, bins=17, generator=torch.Generator().manual_seed(2))
    exact = 0.5 * math.log2(2 * math.pi * math.e * v)        # -E log2 N(x; m, v) per dim
    se = bpd.std().item() / math.sqrt(n)
    assert abs(bpd.mean().item() - exact) < 5 * se + 1e-4, (bpd.mean().item(), exact, se)
    assert torch.allclose(bpd17 - bpd, torch.full_like(bpd, math.log2(17 / 2)))
    # The model here is exact, so -log p(x) of each sample is recovered on average; a one-
    # step model (a plain flow) gives the same number.
    one = gaussian_model(m, v, steps=1, dim=D)
    with torch.no_grad():
        bpd1 = one.bits_per_dim(x, bins=2, generator=torch.Generator().manual_seed(2))
    assert abs(bpd1.mean().item() - exact) < 5 * bpd1.std().item() / math.sqrt(n) + 1e-4


def test_nats_per_dim_is_the_density_of_the_data_in_its_own_scale():
    """Latent data ``a_c + s_c * N(m, v)`` per coordinate c, modelled through the channel
    normalisation ``(x - a_c) / s_c``: nats/dim is ``-E log N(x; a + s m, s^2 v)`` per dim,
    i.e. the normalised data's ``0.5 log(2 pi e v)`` plus the mean ``log s_c`` (the
    normalisation's log-Jacobian), and bits/dim of the same model is nats/dim over ln 2."""
    m, v, D = -0.4, 0.5, 3
    a, s = [3.0, -1.0, 0.25], [0.5, 2.0, 8.0]
    model = gaussian_model(m, v, steps=4, dim=D, channel_mean=a, channel_scale=s)
    n = 20000
    g = torch.Generator().manual_seed(1)
    z = m + math.sqrt(v) * torch.randn(n, D, generator=g, dtype=torch.float64)
    x = torch.tensor(a, dtype=torch.float64) + torch.tensor(s, dtype=torch.float64) * z
    with torch.no_grad():
        nats = model.nats_per_dim(x, generator=torch.Generator().manual_seed(2))
        bpd = model.bits_per_dim(x, bins=2, generator=torch.Generator().manual_seed(2))
    exact = 0.5 * math.log(2 * math.pi * math.e * v) + sum(map(math.log, s)) / D
    se = nats.std().item() / math.sqrt(n)
    assert abs(nats.mean().item() - exact) < 5 * se + 1e-4, (nats.mean().item(), exact, se)
    torch.testing.assert_close(bpd, nats / math.log(2), rtol=0, atol=1e-12)


def forward_log_q(X, t):
    """log q(x_{t_1..t_T} | x_{t_0}) per sample, from the Markov kernels written out."""
    X = X.reshape(X.shape[0], X.shape[1], -1)
    logq = torch.zeros(X.shape[0], dtype=X.dtype)
    for k in range(1, X.shape[1]):
        a = (1 - t[:, k]) / (1 - t[:, k - 1])
        var = t[:, k] ** 2 - a ** 2 * t[:, k - 1] ** 2
        r = X[:, k] - a.unsqueeze(1) * X[:, k - 1]
        logq += (-0.5 * r ** 2 / var.unsqueeze(1) - 0.5 * torch.log(2 * math.pi * var).unsqueeze(1)
                 ).sum(1)
    return logq


@pytest.mark.parametrize("norm,tokens", [({}, False), ({}, True),
                                         (dict(channel_mean=[0.5], channel_scale=[2.0]), False)],
                         ids=["plain", "tokens", "latent-normalised"])
def test_exponentiated_bound_integrates_to_at_most_one(norm, tokens):
    """The bound of ``p(x)`` integrates to at most 1 over the data's own axis -- also
    ``p(x | tokens)`` for one fixed token sequence (padding included), and with a channel
    normalisation (the grid spans the data's scale; without the log-Jacobian the integral
    would be ``scale`` times larger)."""
    a, s = norm.get("channel_mean", [0.0])[0], norm.get("channel_scale", [1.0])[0]
    grid = a + s * torch.linspace(-7, 7, 281, dtype=torch.float64)
    M = 200
    x = grid.repeat_interleave(M).unsqueeze(1)
    cond = {}
    if tokens:
        cond = dict(cond=torch.randn(3, 4, generator=torch.Generator().manual_seed(9),
                                     dtype=torch.float64),
                    cond_mask=torch.tensor([True, True, False]))
    for std, low in [(0.0, 0.999), (0.1, 0.5)]:    # exact Gaussian model, then a perturbed one
        torch.manual_seed(0)
        model = NTM((1,), steps=3, width=16, depth=1, heads=2, data_std=0.8,
                    cond_dim=4 if tokens else 0, **norm).double()
        perturb(model.predictor, std=std, seed=4)
        model.eval()
        with torch.no_grad():
            X, t = model.forward_trajectory(x, generator=torch.Generator().manual_seed(0))
            # per-sample log p(X) - log q(X_{1:T} | x): an unbiased, low-variance ELBO estimate
            # (X in the model's space; the normalisation's log-Jacobian makes it one of x)
            per = model.trajectory_log_prob(X, t, **cond) - forward_log_q(X, t) - math.log(s)
            bpd = model.bits_per_dim(x, bins=2, generator=torch.Generator().manual_seed(0),
                                     **cond)
        elbo = per.view(-1, M).mean(1)
        total = torch.trapezoid(elbo.exp(), grid).item()
        assert elbo.exp()[[0, -1]].max() < 1e-4               # the grid covers the mass
        assert low < total <= 1.0 + 1e-6, (std, total)
        # bits_per_dim (analytic entropy H_q) estimates the same bound: -ELBO / ln 2
        diff = -bpd * math.log(2) - per
        assert abs(diff.mean().item()) < 5 * diff.std().item() / math.sqrt(len(diff)) + 1e-9
        if std == 0.0:
            assert per.view(-1, M).std(1).max() < 1e-9     # exact model: ELBO = log p(x)


def test_posterior_mean_is_exact_for_gaussian_data():
    """Tweedie through the exact trajectory score equals the analytic E[x | X]."""
    m, v, D = 0.3, 0.6, 2
    model = gaussian_model(m, v, steps=3, shift=1.5, dim=D)
    g = torch.Generator().manual_seed(4)
    x = m + math.sqrt(v) * torch.randn(5, D, generator=g, dtype=torch.float64)
    X, t = model.forward_trajectory(x, generator=g, t_min=0.04)
    post = model.posterior_mean(X, t)
    tt = t[0, :3]                                  # levels t_0..t_{T-1}; x_1 carries nothing
    c = 1 - tt
    lo = torch.minimum(tt.view(-1, 1), tt.view(1, -1))
    hi = torch.maximum(tt.view(-1, 1), tt.view(1, -1))
    Sinv = torch.linalg.inv(lo ** 2 * (1 - hi) / (1 - lo))
    prec = 1 / v + c @ Sinv @ c
    ref = (m / v + torch.einsum("i,ij,bjd->bd", c, Sinv, X[:, :3])) / prec
    assert torch.allclose(post, ref, atol=1e-10), (post, ref)
    assert (post - X[:, 0] / (1 - tt[0])).abs().max() > 1e-3   # the correction matters
