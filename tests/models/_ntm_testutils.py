"""Shared helpers for the NTM model tests."""
import torch
from torch.autograd.functional import jacobian
from torch.distributions import Normal

from ntm_engine.condition import Condition, labels_of
from ntm_engine.models import NTM


def perturb(model: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add N(0, std^2) noise to every parameter, so zero-initialised layers are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


def small_ntm(data_shape=(1, 4, 4), steps=3, num_classes=3, seed=0, std=0.1, **kw):
    """A tiny float64 NTM with random (non-identity) transporter and predictor head."""
    torch.manual_seed(seed)
    cfg = dict(width=32, depth=2, heads=2, transporter_layers=2, transporter_hidden=16,
               context_dim=16)
    cfg.update(kw)
    model = NTM(data_shape, steps=steps, num_classes=num_classes, **cfg).double()
    return perturb(model, std, seed).eval()


# the conditions a model may take: class labels, condition tokens, or both
COND_KINDS = ("labels", "tokens", "both")
COND_DIM, COND_LEN = 5, 4


def conditioned_ntm(kind, data_shape=(1, 4, 4), **kw):
    """:func:`small_ntm` conditioned on ``kind``: 3 classes and/or condition tokens of
    ``COND_DIM`` features."""
    kw.setdefault("num_classes", 3 if kind in ("labels", "both") else 0)
    kw.setdefault("cond_dim", COND_DIM if kind in ("tokens", "both") else 0)
    return small_ntm(data_shape, **kw)


def condition_of(kind, B, seed=0):
    """A condition of ``kind`` for ``B`` rows: labels ``[B]`` in 0..2, or a Condition whose
    tokens ``[B, COND_LEN, COND_DIM]`` (float64) have a padding mask (row ``b`` keeps its first
    ``1 + b % COND_LEN`` tokens) and, for ``"both"``, labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (B,), generator=g)
    if kind == "labels":
        return labels
    tokens = torch.randn(B, COND_LEN, COND_DIM, generator=g, dtype=torch.float64)
    mask = torch.arange(COND_LEN).unsqueeze(0) <= (torch.arange(B) % COND_LEN).unsqueeze(1)
    return Condition(labels if kind == "both" else None, tokens, mask)


def joint_covariance(t, v):
    """Cov of (x_{t_0}, ..., x_{t_T}) per dimension for x ~ N(m, v): (1-t_i)(1-t_j) v + S_ij."""
    lo = torch.minimum(t.view(-1, 1), t.view(1, -1))
    hi = torch.maximum(t.view(-1, 1), t.view(1, -1))
    S = torch.where(lo < 1, lo ** 2 * (1 - hi) / (1 - lo).clamp_min(1e-300), torch.ones_like(lo))
    return torch.outer(1 - t, 1 - t) * v + S


def brute_force_nll(model, X, t, y):
    """-log p(X) per sample, level by level, with slogdet of the transporter's Jacobian."""
    B, T = X.shape[0], X.shape[1] - 1
    D = model.dim
    Xf = X.reshape(B, T + 1, D)
    out = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        yb = None if y is None else y[b:b + 1]
        us, logdets = [], []
        for k in range(T):
            tk = t[b, k:k + 1]
            f = lambda v: model.transporter(v.unsqueeze(0), tk, labels_of(yb))[0][0]  # noqa: E731
            us.append(f(Xf[b, k]))
            J = jacobian(f, Xf[b, k])
            logdets.append(torch.linalg.slogdet(J).logabsdet)
        u_in = torch.stack(us[1:] + [Xf[b, T]]).unsqueeze(0)
        mu, ls = model.predictor(u_in, t[b:b + 1, :T], t[b:b + 1, 1:], yb)
        logp = Normal(0.0, 1.0).log_prob(Xf[b, T]).sum()
        for k in range(T):
            logp = logp + Normal(mu[0, k], ls[0, k].exp()).log_prob(us[k]).sum() + logdets[k]
        out[b] = -logp
    return out
