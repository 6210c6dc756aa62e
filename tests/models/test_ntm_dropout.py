"""Predictor dropout (``NTM(dropout=p)``): a training-only regulariser.  It changes no
parameter (a model with dropout loads the weights of one without), perturbs training passes,
and leaves evaluation -- the likelihood and sampling -- exactly what the same weights compute
without it."""
import pytest
import torch

from ntm_engine.models import NTM

from _ntm_testutils import perturb

KW = dict(data_shape=(1, 4, 4), steps=(2, 4), num_classes=3, width=32, depth=2, heads=2,
          patch_size=2, transporter_layers=2, transporter_hidden=16, context_dim=16)


def _pair(p: float):
    torch.manual_seed(0)
    plain = NTM(**KW)
    perturb(plain, std=0.2)
    dropped = NTM(**KW, dropout=p)
    dropped.load_state_dict(plain.state_dict())    # the same keys: old runs load unchanged
    return plain, dropped


def test_dropout_changes_training_passes_only():
    plain, dropped = _pair(0.3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    X, t = plain.forward_trajectory(x, generator=torch.Generator().manual_seed(2))
    plain.eval(), dropped.eval()
    ref = plain.trajectory_log_prob(X, t, y)
    assert torch.equal(dropped.trajectory_log_prob(X, t, y), ref)
    s0 = plain.sample(4, y=y[:4], generator=torch.Generator().manual_seed(3))
    s1 = dropped.sample(4, y=y[:4], generator=torch.Generator().manual_seed(3))
    assert torch.equal(s0, s1)
    plain.train(), dropped.train()
    plain.label_dropout = dropped.label_dropout = 0.0
    assert torch.equal(plain.trajectory_log_prob(X, t, y), ref)    # p = 0: train = eval
    a, b = dropped.trajectory_log_prob(X, t, y), dropped.trajectory_log_prob(X, t, y)
    assert not torch.allclose(a, ref, rtol=1e-3) and not torch.allclose(a, b, rtol=1e-3)
    assert torch.isfinite(a).all()


def test_dropout_training_passes_gradients_and_a_bad_value_is_refused():
    _, dropped = _pair(0.1)
    dropped.train()
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    dropped.trajectory_nll(x, y, generator=torch.Generator().manual_seed(0)).mean().backward()
    grads = [p.grad for n, p in dropped.named_parameters() if n.startswith("predictor.blocks")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=rf"dropout must lie in \[0, 1\), got {bad}"):
            NTM(**KW, dropout=bad)
