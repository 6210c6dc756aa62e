"""Guided sampling combines like with like; the slow trajectory-denoising sampler."""
import pytest
import torch

from ntm_engine.models import NTM, guide

from ntm_engine.condition import null_condition

from _ntm_testutils import COND_KINDS, condition_of, conditioned_ntm, small_ntm


def teacher_forced(model, X, t, y):
    with torch.no_grad():
        U, _, mu, ls = model.predict_levels(X, t, y)
    return U, mu, ls


@pytest.mark.parametrize("kind", COND_KINDS)
def test_guided_levels_are_the_closed_form_in_one_space(kind):
    """Temperature 0, label-free (identity) transporter: every sampled level is the guided
    mean of the conditional and unconditional predictions on the sampled trajectory (the
    unconditional: null labels, every condition token masked)."""
    model = conditioned_ntm(kind, (1, 4, 4), steps=3, patch_size=2, std=0.3,
                            transporter_layers=0)
    y = condition_of(kind, 4)
    w = 2.0
    x, X = model.sample(4, y=y, guidance=w, temperature=0.0, return_trajectory=True,
                        generator=torch.Generator().manual_seed(0))
    t = model.time_grid(4, dtype=torch.float64)
    U, mu_c, ls_c = teacher_forced(model, X, t, y)
    _, mu_u, ls_u = teacher_forced(model, X, t, null_condition(y, 3))
    mu_g, _ = guide(mu_c, ls_c, mu_u, ls_u, w)
    assert torch.allclose(U, mu_g, atol=1e-10)
    if kind == "tokens":   # the null branch is the model without tokens (its null sequence)
        _, mu_none, _ = teacher_forced(model, X, t, None)
        assert torch.allclose(mu_u, mu_none, atol=1e-12)
    assert (mu_g - mu_c).abs().max() > 1e-2                     # guidance changed something


def test_label_conditioned_transporter_guides_each_branch_in_its_own_space():
    """The legacy label-conditioned coupling transporter (old runs): the unconditional mean
    is carried into the conditional space before the two Gaussians are combined."""
    model = small_ntm((1, 4, 4), steps=3, patch_size=2, num_classes=3, std=0.3,
                      transporter="coupling", transporter_label_conditioned=True)
    assert model.transporter_sees_labels()
    y = torch.tensor([0, 1, 2, 1])
    null = torch.full_like(y, 3)
    w = 1.5
    x, X = model.sample(4, y=y, guidance=w, temperature=0.0, return_trajectory=True,
                        generator=torch.Generator().manual_seed(0))
    t = model.time_grid(4, dtype=torch.float64)
    U, mu_c, ls_c = teacher_forced(model, X, t, y)            # conditional space
    _, mu_n, ls_u = teacher_forced(model, X, t, null)          # unconditional space
    B, T, D = mu_n.shape
    rows_t = t[:, :T].reshape(B * T)
    with torch.no_grad():   # the unconditional mean carried into the conditional space
        x_n, _ = model.transporter.inverse(mu_n.reshape(B * T, D), rows_t,
                                           null.repeat_interleave(T))
        mu_u = model.transporter(x_n, rows_t, y.repeat_interleave(T))[0].view(B, T, D)
    mu_g, _ = guide(mu_c, ls_c, mu_u, ls_u, w)
    assert torch.allclose(U, mu_g, atol=1e-9)
    naive, _ = guide(mu_c, ls_c, mu_n, ls_u, w)                # mixing the two spaces
    assert (naive - mu_g).abs().max() > 1e-3


def test_trajectory_denoise_is_the_posterior_mean_of_the_sampled_trajectory():
    model = small_ntm((1, 4, 4), steps=3, patch_size=2, num_classes=3, std=0.2)
    y = torch.tensor([2, 0, 1])
    kw = dict(y=y, t_min=0.05, guidance=1.0)
    x_td = model.sample(3, sampler="trajectory-denoise",
                        generator=torch.Generator().manual_seed(4), **kw)
    x, X = model.sample(3, return_trajectory=True, generator=torch.Generator().manual_seed(4),
                        **kw)
    t = model.time_grid(3, t_min=0.05, dtype=torch.float64)
    assert torch.allclose(x_td, model.posterior_mean(X, t, y), atol=1e-12)
    assert (x_td - x).abs().max() > 1e-3
    with pytest.raises(ValueError, match="sampler"):
        model.sample(2, sampler="ode")
    with pytest.raises(ValueError, match="denoiser"):
        model.sample(2, sampler="trajectory-denoise", denoiser=torch.nn.Identity())


def test_trajectory_denoise_shrinks_gaussian_samples_towards_the_mean():
    """Exact Gaussian model: E[x | X] has mean m and variance v - Var[x | x_{t_0}]."""
    torch.manual_seed(0)
    m, v, t0, n = 0.4, 0.5, 0.15, 20000
    model = NTM((2,), steps=3, width=16, depth=1, heads=2, transporter_layers=0, shift=0.5,
                data_mean=m, data_std=v ** 0.5).double().eval()
    x = model.sample(n, t_min=t0, sampler="trajectory-denoise",
                     generator=torch.Generator().manual_seed(0))
    expected = v - 1 / (1 / v + (1 - t0) ** 2 / t0 ** 2)
    assert (x.mean(0) - m).abs().max() < 4 * (expected / n) ** 0.5
    assert (x.var(0) - expected).abs().max() < 4 * expected * (2 / n) ** 0.5
    assert (x.var(0) < v - 0.01).all()


def test_sample_options_are_keyword_only():
    model = small_ntm((4,), steps=2, patch_size=2, num_classes=0)
    with pytest.raises(TypeError):
        model.sample(2, None, 2, 1.0)
