"""Flow-matching pretraining and the NTM initialised from it: the posterior coefficients
against an independent float64 derivation, the FM-initialised NTM exact on Gaussian data, the
flow_matching parameterisation written out, its exact likelihood (also at t_0 = 0), the FM
loss's presentation contract, the Euler sampler, a short pretraining, and the anchor term."""
import math

import pytest
import torch

from ntm_engine.data import sample_toy
from ntm_engine.metrics import frechet_distance_features
from ntm_engine.models import NTM, FlowMatchingModel, schedule
from ntm_engine.models.flow_matching import (TRAJECTORY_FRACTION, frozen_copy,
                                             ntm_from_flow_matching, random_grid,
                                             velocity_targets)
from ntm_engine.models.loss import anchored_trajectory_nll, training_trajectory

from _ntm_testutils import brute_force_nll, joint_covariance, perturb, small_ntm

F64 = torch.float64


def gaussian_velocity(m, var):
    """The exact velocity E[e - x | x_t] of data N(m, var I) (x_t = (1-t) x + t e), as a
    stand-in for the predictor's ``head_outputs``: ``(v(u_in, t_hi), 0)``."""
    def head_outputs(u_in, t_lo, t_hi, y=None, *, steps=None):
        t = t_hi.unsqueeze(-1).to(u_in.dtype)
        Vt = (1 - t) ** 2 * var + t * t
        r = u_in - (1 - t) * m
        v = t / Vt * r - (m + (1 - t) * var / Vt * r)
        return v, torch.zeros_like(v)
    return head_outputs


def conditional_posterior(s, t):
    """q(x_s | x_t, x) from the Markov construction itself (float64, no closed form):
    x_s = (1-s) x + s e1, x_t = a x_s + sig e2, and Gaussian conditioning of (x_s, x_t)."""
    a = (1 - t) / (1 - s)
    sig = math.sqrt(t * t - a * a * s * s)
    M = torch.tensor([[s, 0.0], [a * s, sig]], dtype=F64)   # (x_s, x_t) - mean = M (e1, e2)
    cov = M @ M.T
    assert math.isclose(cov[1, 1].item(), t * t, rel_tol=1e-12)  # the marginal of x_t
    A = (cov[0, 1] / cov[1, 1]).item()
    C2 = (cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]).item()
    return A, (1 - s) - A * (1 - t), math.sqrt(max(C2, 0.0))


# ----------------------------------------------------------------------------- coefficients

def test_posterior_coefficients_match_the_markov_construction():
    g = torch.Generator().manual_seed(0)
    pairs = [(0.25, 0.5), (0.5, 1.0), (0.01, 0.02), (0.9, 0.95), (0.3, 1.0)]
    pairs += [tuple(sorted(torch.rand(2, generator=g, dtype=F64).tolist())) for _ in range(20)]
    for s, t in pairs:
        A, B, log_C = schedule.posterior_coefficients(torch.tensor(s, dtype=F64),
                                                      torch.tensor(t, dtype=F64))
        A_ref, B_ref, C_ref = conditional_posterior(s, t)
        assert A.item() == pytest.approx(A_ref, rel=1e-12, abs=1e-14), (s, t)
        assert B.item() == pytest.approx(B_ref, rel=1e-12, abs=1e-14), (s, t)
        assert log_C.exp().item() == pytest.approx(C_ref, rel=1e-10), (s, t)


def test_posterior_coefficients_limits():
    s = torch.tensor([0.0, 0.2, 0.7], dtype=F64)
    A, B, log_C = schedule.posterior_coefficients(s, torch.ones_like(s))   # t = 1: q(x_s | x)
    assert torch.allclose(A, torch.zeros_like(s), atol=1e-15)
    assert torch.allclose(B, 1 - s, rtol=1e-14)
    assert torch.allclose(log_C[1:].exp(), s[1:], rtol=1e-14)
    t = torch.tensor([0.1, 0.5, 1.0], dtype=F64)
    for dtype in (F64, torch.float32):                                      # s = 0: x itself
        A, B, log_C = schedule.posterior_coefficients(torch.zeros(3, dtype=dtype), t.to(dtype))
        assert (A == 0).all() and torch.allclose(B, torch.ones_like(B), rtol=1e-6)
        assert (log_C == -math.inf).all()
        # a tiny s: no NaN, C -> 0 continuously
        A, B, log_C = schedule.posterior_coefficients(torch.full((3,), 1e-6, dtype=dtype),
                                                      t.to(dtype))
        assert torch.isfinite(log_C).all() and (log_C < math.log(1e-5)).all()


def test_flow_matching_reverse_is_the_gaussian_reverse_step_for_the_exact_velocity():
    """Law of total variance: with x0_hat = E[x | x_t] of data N(m, std^2), N(A u + B x0_hat,
    C^2 + B^2 Var[x | x_t]) is q(x_s | x_t) = gaussian_reverse."""
    m, std = 0.4, 0.7
    s = torch.tensor([0.0, 0.0, 0.1, 0.25, 0.5, 0.9], dtype=F64)
    t = torch.tensor([0.05, 1.0, 0.2, 1.0, 0.75, 0.95], dtype=F64)
    u = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=F64)
    Vt = (1 - t) ** 2 * std ** 2 + t * t
    x0_hat = m + (1 - t) * std ** 2 / Vt * (u - (1 - t) * m)
    A, B, log_sig = schedule.flow_matching_reverse(s, t, std)
    A_g, b_g, log_c_g = schedule.gaussian_reverse(s, t, m, std)
    assert torch.allclose(A * u + B * x0_hat, A_g * u + b_g, rtol=1e-12, atol=1e-13)
    assert torch.allclose(log_sig, log_c_g, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(log_sig).all()
    # std -> 0 (a data estimate without uncertainty): the posterior q(x_s | x_t, x0_hat)
    _, _, log_C = schedule.posterior_coefficients(s[2:], t[2:])
    _, _, log_sig0 = schedule.flow_matching_reverse(s[2:], t[2:], 1e-9)
    assert torch.allclose(log_sig0, log_C, atol=1e-12)
    with pytest.raises(ValueError, match="std must be > 0"):
        schedule.flow_matching_reverse(s, t, 0.0)


# ----------------------------------------------------------------------------- the NTM

@pytest.mark.parametrize("t_min", [0.0, 0.03])
def test_fm_initialised_ntm_is_exact_on_gaussian_data(t_min):
    """An identity transporter and the exact Gaussian velocity give, per slot, the analytic
    q(x_{t_k} | x_{t_{k+1}}, ..., x_1) (Schur complement of the joint covariance)."""
    m, var, D = 0.7, 0.3, 3
    torch.manual_seed(0)
    model = NTM((D,), steps=4, width=16, depth=1, heads=2, transporter_layers=0, shift=2.0,
                data_mean=-1.0, data_std=math.sqrt(var), parameterization="flow_matching")
    model = model.double().eval()
    model.predictor.head_outputs = gaussian_velocity(m, var)   # data_mean is not used
    g = torch.Generator().manual_seed(0)
    x = m + math.sqrt(var) * torch.randn(6, D, generator=g, dtype=F64)
    X, t = model.forward_trajectory(x, generator=g, t_min=t_min)
    with torch.no_grad():
        U, _, mu, ls = model.predict_levels(X, t)
    tt = t[0]
    C = joint_covariance(tt, var)
    mean = (1 - tt) * m
    for k in range(4):
        rest = list(range(k + 1, 5))
        W = torch.linalg.solve(C[rest][:, rest], C[rest, k])
        cond_mean = mean[k] + torch.einsum("r,brd->bd", W, X[:, rest] - mean[rest].view(1, -1, 1))
        cond_var = C[k, k] - C[k, rest] @ W
        assert torch.allclose(mu[:, k], cond_mean, atol=1e-12), k
        assert torch.allclose(ls[:, k], 0.5 * torch.log(cond_var).expand_as(ls[:, k]),
                              atol=1e-12), k
    if t_min == 0.0:   # the s = 0 slot is a proper density: bits/dim = -E log2 N(x; m, var)
        n = 20000
        xs = m + math.sqrt(var) * torch.randn(n, D, generator=g, dtype=F64)
        with torch.no_grad():
            bpd = model.bits_per_dim(xs, bins=2, generator=g)
        exact = 0.5 * math.log2(2 * math.pi * math.e * var)
        assert abs(bpd.mean().item() - exact) < 5 * bpd.std().item() / math.sqrt(n) + 1e-4


def test_flow_matching_parameterisation_written_out():
    """mu = A u + B (u - t v), log sig = 1/2 log(C^2 + B^2 r_t^2) + clamp(delta), with the
    docs/design.md coefficients typed here (not schedule.py's), slots with s = 0 included."""
    model = small_ntm((1, 4, 4), steps=3, patch_size=2, std=0.3, data_std=0.6,
                      parameterization="flow_matching")
    p = model.predictor
    g = torch.Generator().manual_seed(2)
    u_in = torch.randn(4, 3, 16, generator=g, dtype=F64)
    t_lo = torch.tensor([[0.0, 0.3, 0.6], [0.02, 0.4, 0.55], [0.0, 0.1, 0.2], [0.01, 0.5, 0.9]],
                        dtype=F64)
    t_hi = torch.cat([t_lo[:, 1:], torch.ones(4, 1, dtype=F64)], dim=1)
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        mu, ls = p(u_in, t_lo, t_hi, y)
        v, delta = p.head_outputs(u_in, t_lo, t_hi, y)
    assert v.abs().min() > 0 and delta.abs().min() > 0          # a non-trivial head
    s, t = t_lo.unsqueeze(-1), t_hi.unsqueeze(-1)
    A = s ** 2 * (1 - t) / (t ** 2 * (1 - s))
    B = (t - s) * (t + s - 2 * t * s) / (t ** 2 * (1 - s))
    C2 = s ** 2 * (t - s) * (t + s - 2 * t * s) / (t ** 2 * (1 - s) ** 2)
    r2 = 0.36 * t ** 2 / ((1 - t) ** 2 * 0.36 + t ** 2)
    k = p.sigma_clamp
    assert torch.allclose(mu, A * u_in + B * (u_in - t * v), rtol=1e-12, atol=1e-12)
    assert torch.allclose(ls, 0.5 * torch.log(C2 + B ** 2 * r2) + k * torch.tanh(delta / k),
                          rtol=1e-12, atol=1e-12)


def test_fm_ntm_likelihood_is_exact_at_t0_zero():
    """The s = 0 slot keeps the trajectory likelihood exact and finite (brute force)."""
    model = small_ntm((4,), steps=3, patch_size=2, num_classes=2, std=0.3,
                      parameterization="flow_matching")
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    y = torch.tensor([0, 1, 1])
    with torch.no_grad():
        # (eval mode: t_0 = 0)
        nll = model.trajectory_nll(x, y, generator=torch.Generator().manual_seed(7))
        X, t = model.forward_trajectory(x, generator=torch.Generator().manual_seed(7))
        assert (t[:, 0] == 0).all()
        ref = brute_force_nll(model, X, t, y)
        bpd = model.bits_per_dim(x, y, bins=17, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(nll).all() and torch.isfinite(bpd).all()
    assert torch.allclose(nll, ref, rtol=1e-11, atol=1e-10), (nll, ref)


@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_fm_ntm_kv_cache_matches_full_recompute(guidance):
    model = small_ntm((1, 4, 4), steps=3, patch_size=2, num_classes=3, std=0.2,
                      parameterization="flow_matching")
    kw = dict(y=torch.tensor([0, 1, 2, 1]), guidance=guidance, return_trajectory=True)
    x1, X1 = model.sample(4, generator=torch.Generator().manual_seed(0), use_cache=True, **kw)
    x2, X2 = model.sample(4, generator=torch.Generator().manual_seed(0), use_cache=False, **kw)
    assert torch.isfinite(X1).all()
    assert torch.allclose(X1, X2, rtol=1e-10, atol=1e-10)


def test_ntm_from_flow_matching_starts_from_its_weights():
    torch.manual_seed(0)
    fm = FlowMatchingModel((1, 4, 4), steps=3, num_classes=2, width=16, depth=1, heads=2,
                           patch_size=2).double()
    perturb(fm, std=0.1)
    ntm = ntm_from_flow_matching(fm, transporter_layers=2, transporter_hidden=8).eval()
    assert ntm.predictor.parameterization == "flow_matching"
    for (k, a), b in zip(fm.predictor.state_dict().items(), ntm.predictor.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    X, t = ntm.forward_trajectory(x, generator=torch.Generator().manual_seed(1))
    U, logdet, _, _ = ntm.predict_levels(X, t)
    assert torch.equal(U, X[:, :3].reshape(5, 3, 16)) and (logdet == 0).all()  # identity f_T


# ----------------------------------------------------------------------------- the anchor

def test_anchored_nll_is_the_training_nll_plus_the_distance_to_the_reference():
    """Eq. 3.8: the NTM's means (from the transporter's u-levels) against the frozen FM
    predictor's from the x-levels of the same trajectory."""
    model = small_ntm((1, 4, 4), steps=3, patch_size=2, num_classes=3, std=0.1,
                      label_dropout=0.5, parameterization="flow_matching").train()
    ref = frozen_copy(model.predictor)
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    perturb(model.predictor, std=0.05, seed=9)
    nll, sq = anchored_trajectory_nll(model, ref, x, y, torch.Generator().manual_seed(3))
    assert torch.equal(nll, model.trajectory_nll(x, y, generator=torch.Generator().manual_seed(3)))
    X, t, yd = training_trajectory(model, x, y, torch.Generator().manual_seed(3))
    assert (yd == 3).any() and (yd < 3).any()             # dropped labels reach both predictors
    U, _, mu, _ = model.predict_levels(X, t, yd)
    x_in = X[:, 1:].reshape(6, 3, 16)                      # slot k reads x_{t_{k+1}}
    mu_ref, _ = ref(x_in, t[:, :3], t[:, 1:], yd)
    assert torch.allclose(sq, (mu - mu_ref).pow(2).sum(dim=(1, 2)), rtol=1e-12)
    assert (sq > 0).all()
    sq.sum().backward()
    assert all(p.grad is None for p in ref.parameters())
    assert model.predictor.head.weight.grad.abs().max() > 0


def test_the_anchor_ties_u_space_means_to_x_space_predictions():
    """With the reference equal to the NTM's own predictor, the anchor is zero exactly when
    the transporter is the identity, and otherwise measures how far the transporter moves
    the means; its gradient reaches the transporter (the u-to-x tie of Eq. 3.8)."""
    model = small_ntm((1, 4, 4), steps=3, patch_size=2, num_classes=0, std=0.1,
                      parameterization="flow_matching").train()
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    identity = small_ntm((1, 4, 4), steps=3, patch_size=2, num_classes=0, std=0.1,
                         parameterization="flow_matching", transporter_layers=0).train()
    identity.predictor.load_state_dict(model.predictor.state_dict())
    _, sq0 = anchored_trajectory_nll(identity, frozen_copy(identity.predictor), x,
                                     generator=torch.Generator().manual_seed(2))
    assert sq0.abs().max() < 1e-24
    _, sq = anchored_trajectory_nll(model, frozen_copy(model.predictor), x,
                                    generator=torch.Generator().manual_seed(2))
    assert (sq > 1e-8).all()
    sq.sum().backward()
    grads = [p.grad for p in model.transporter.parameters() if p.grad is not None]
    assert grads and max(float(g.abs().max()) for g in grads) > 0


# ----------------------------------------------------------------------------- the FM model

def test_random_grid_and_velocity_targets():
    g = torch.Generator().manual_seed(0)
    t = random_grid(500, 4, shift=2.0, t_min_max=0.05, generator=g, dtype=F64)
    assert (t[:, -1] == 1).all() and (t[:, 1:] > t[:, :-1]).all() and (t[:, 0] >= 0).all()
    assert (t[:, 0] < torch.clamp(t[:, 1], max=0.05)).all()
    assert t[:, 1].min() < 0.05 and t[:, 3].max() > 0.95   # (0, 1) is covered
    x = torch.randn(500, 3, generator=g, dtype=F64)
    X = schedule.forward_trajectory(x, t, g)
    e = velocity_targets(X, x, t) + x.unsqueeze(1)          # the marginal noise of each level
    assert torch.allclose(X[:, 1:], (1 - t[:, 1:, None]) * x.unsqueeze(1) + t[:, 1:, None] * e,
                          atol=1e-12)
    assert abs(e.std().item() - 1) < 0.03                   # marginally N(0, 1)


def test_fm_loss_presents_trajectories_then_single_levels():
    """The loss is |v - (e - x)|^2 averaged over levels, with v from the block-causal pass for
    the first ceil(B/2) samples and from single-level calls (velocity) for the rest."""
    torch.manual_seed(0)
    fm = FlowMatchingModel((1, 4, 4), steps=3, num_classes=3, width=16, depth=2, heads=2,
                           patch_size=2, label_dropout=0.0).double()
    perturb(fm, std=0.2)
    B, T = 5, 3
    x = torch.randn(B, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    y = torch.tensor([0, 1, 2, 0, 1])
    loss = fm.loss(x, y, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    t = random_grid(B, T, fm.shift, fm.t_min_max, g, dtype=F64)
    X = schedule.forward_trajectory(x.reshape(B, 16), t, g)
    target = velocity_targets(X, x.reshape(B, 16), t)
    n = math.ceil(TRAJECTORY_FRACTION * B)
    v_traj, _ = fm.predictor.head_outputs(X[:n, 1:], t[:n, :T], t[:n, 1:], y[:n])
    v_single = torch.stack([fm.velocity(X[n:, k + 1].view(-1, 1, 4, 4), t[n:, k + 1], t[n:, k],
                                        y[n:]).reshape(-1, 16) for k in range(T)], dim=1)
    v = torch.cat([v_traj, v_single])
    assert torch.allclose(loss, (v - target).pow(2).sum(2).mean(1), rtol=1e-12)
    # the presentations differ (context vs none), so the split is real
    v_all, _ = fm.predictor.head_outputs(X[:, 1:], t[:, :T], t[:, 1:], y)
    assert (v_all[n:, :T - 1] - v_single[:, :T - 1]).abs().max() > 1e-6


def test_euler_sampler_follows_the_exact_gaussian_flow():
    """With the exact velocity of N(m, std^2) data the ODE maps x_1 to m + std x_1; Euler's
    error shrinks like 1/N."""
    m, std = 0.5, 0.6
    torch.manual_seed(0)
    fm = FlowMatchingModel((2,), width=16, depth=1, heads=2, shift=1.5).double()
    fm.predictor.head_outputs = gaussian_velocity(m, std ** 2)
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    errs = []
    for N in (32, 128):
        x = fm.sample(50, steps=N, generator=torch.Generator().manual_seed(3))
        errs.append((x - (m + std * z)).abs().max().item())
    assert errs[1] < 0.03 and 3.0 < errs[0] / errs[1] < 5.0, errs   # first order: ratio 4
    x = fm.sample(50, steps=128, temperature=0.5, generator=torch.Generator().manual_seed(3))
    assert (x - (m + std * 0.5 * z)).abs().max() < 0.03


def test_euler_sampler_guidance_and_labels():
    fm = FlowMatchingModel((1, 4, 4), num_classes=3, width=16, depth=1, heads=2,
                           patch_size=2).double()
    perturb(fm, std=0.2)
    y = torch.tensor([0, 1, 2])
    a = fm.sample(3, y=y, steps=4, guidance=0.0, generator=torch.Generator().manual_seed(0))
    b = fm.sample(3, y=y, steps=4, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 1, 4, 4) and torch.isfinite(b).all() and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="guidance needs labels"):
        fm.sample(3, guidance=1.0)
    with pytest.raises(ValueError, match="unconditional flow-matching model"):
        FlowMatchingModel((2,), width=16, depth=1, heads=2).sample(2, y=1)
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"velocity: t_next must be a number or have shape "
                       r"\[3\], got \[2\]"):
        fm.velocity(x, 0.5, torch.zeros(2), y)


def test_short_pretraining_lowers_the_loss_and_samples_the_data():
    """100 Adam steps on two moons: the held-out FM loss (fixed noise) drops well below the
    loss of the zero velocity it starts from, and 16-step Euler samples are far closer to
    the data (Frechet distance of raw coordinates) than the N(0, I) they start from."""
    torch.manual_seed(0)
    fm = FlowMatchingModel((2,), steps=4, width=32, depth=1, heads=2, patch_size=2, shift=0.5)
    opt = torch.optim.Adam(fm.parameters(), lr=3e-3)
    held_out = sample_toy("two_moons", 1000, generator=torch.Generator().manual_seed(1))

    def held_out_loss():
        fm.eval()
        with torch.no_grad():
            return fm.loss(held_out, generator=torch.Generator().manual_seed(2)).mean().item()

    before = held_out_loss()
    g = torch.Generator().manual_seed(3)
    fm.train()
    for _ in range(100):
        loss = fm.loss(sample_toy("two_moons", 128, generator=g), generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.75 * before, (before, after)
    s = fm.sample(1000, steps=16, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(4))
    fd, fd_noise = (frechet_distance_features(a, held_out) for a in (s, noise))
    assert fd < 0.25 * fd_noise, (fd, fd_noise)
