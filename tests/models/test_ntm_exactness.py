"""trajectory_nll against a brute-force computation (explicit Jacobians, written-out Gaussians)."""
import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import Normal

from ntm_engine.models import NTM

from _ntm_testutils import COND_KINDS, brute_force_nll, condition_of, conditioned_ntm, perturb


@pytest.mark.parametrize("kind", COND_KINDS)
@pytest.mark.parametrize("parameterization", ["gaussian", "flow_matching"])
@pytest.mark.parametrize("data_shape,steps,patch", [((4,), 3, 2), ((1, 2, 2), 2, 1), ((2,), 4, 2)])
def test_trajectory_nll_matches_brute_force(data_shape, steps, patch, parameterization, kind):
    """Labels, condition tokens (the brute force runs the predictor row by row, so a padding
    mask or a batch-wide mix would show) or both."""
    model = conditioned_ntm(kind, data_shape, steps=steps, patch_size=patch, std=0.3,
                            label_dropout=0.0, parameterization=parameterization)
    model.train()                        # t_0 drawn per sample; no label dropout (p = 0)
    x = torch.randn(3, *data_shape, generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64)
    y = condition_of(kind, 3)
    nll = model.trajectory_nll(x, y, generator=torch.Generator().manual_seed(7))
    X, t = model.forward_trajectory(x, generator=torch.Generator().manual_seed(7))
    assert (t[:, 0] > 0).all() and (t[:, 0] <= 0.05).all()
    with torch.no_grad():
        ref = brute_force_nll(model, X, t, y)
        assert torch.allclose(nll, ref, rtol=1e-11, atol=1e-10), (nll, ref)
        assert torch.allclose(model.trajectory_log_prob(X, t, y), -ref, rtol=1e-11, atol=1e-10)
    # the transporter is not the identity here, so the log-det terms were exercised
    with torch.no_grad():
        _, logdet, _, _ = model.predict_levels(X, t, y)
    assert logdet.abs().min() > 1e-3


def test_one_step_model_is_a_plain_flow():
    """T = 1, new predictor (mu = 0, sig = 1 at t_0 = 0): L = flow NLL + N(x_1) term."""
    torch.manual_seed(0)
    model = NTM((4,), steps=1, width=16, depth=1, heads=2, transporter_layers=3,
                transporter_hidden=16, context_dim=8).double()
    perturb(model.transporter, std=0.3)
    model.eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    X, t = model.forward_trajectory(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(X[:, 0], x) and (t == torch.tensor([0.0, 1.0], dtype=t.dtype)).all()
    with torch.no_grad():
        nll = model.trajectory_nll(x, generator=torch.Generator().manual_seed(3))
        flow = []
        for b in range(6):
            f = lambda v: model.transporter(v.unsqueeze(0), t[b, :1])[0][0]  # noqa: E731
            z = f(x[b])
            ld = torch.linalg.slogdet(jacobian(f, x[b])).logabsdet
            flow.append(-(Normal(0.0, 1.0).log_prob(z).sum() + ld))
        flow = torch.stack(flow)
        noise = 0.5 * X[:, 1].pow(2).sum(1) + 2 * math.log(2 * math.pi)
    assert torch.allclose(nll - noise, flow, rtol=1e-12, atol=1e-11)


def test_forward_process_marginals():
    """x_{t_k} | x ~ N((1-t_k) x, t_k^2 I) and the level covariance S (Markov chain)."""
    model = NTM((2,), steps=4, shift=3.0, width=16, depth=1, heads=2, transporter_layers=0)
    model.eval()
    n = 40000
    x = torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(n, 2)
    X, t = model.forward_trajectory(x, generator=torch.Generator().manual_seed(0), t_min=0.04)
    tk = t[0]
    r = torch.arange(5, dtype=torch.float64) / 4
    assert torch.allclose(tk[1:], 3 * r[1:] / (1 + 2 * r[1:]))
    assert tk[0] == 0.04
    noise = X - (1 - tk).view(1, 5, 1) * x.unsqueeze(1)              # [n, 5, 2]
    assert noise.mean(0).abs().max() < 4 * tk.max() / math.sqrt(n)
    cov = torch.einsum("nid,njd->ij", noise, noise) / (2 * n)
    lo = torch.minimum(tk.view(5, 1), tk.view(1, 5))
    hi = torch.maximum(tk.view(5, 1), tk.view(1, 5))
    S = lo ** 2 * (1 - hi) / (1 - lo)
    S[4, 4] = 1.0                                                      # x_1 = e
    assert (cov - S).abs().max() < 0.02
