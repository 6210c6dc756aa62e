"""Pair-wise and end-to-end trajectory losses agree in expectation."""
import math

import pytest
import torch

from ntm_engine.models.loss import loss_from_levels

from _ntm_testutils import small_ntm


@pytest.mark.parametrize("steps", [3, (2, 4)])
def test_pairwise_loss_has_the_end_to_end_expectation(steps):
    model = small_ntm((1, 4, 4), steps=steps, patch_size=2, num_classes=3, std=0.2).train()
    n = 3000
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64).expand(n, 1, 4, 4)
    y = torch.full((n,), 1)
    with torch.no_grad():   # same seed: the same trajectories (k is drawn after them)
        e2e = model.trajectory_nll(x, y, generator=torch.Generator().manual_seed(0))
        pw = model.trajectory_nll(x, y, generator=torch.Generator().manual_seed(0),
                                  trajectory_loss="pairwise")
    d = pw - e2e
    assert d.std() > 1.0                                  # one factor is not the sum
    assert abs(d.mean().item()) < 4 * d.std().item() / math.sqrt(n), (d.mean(), d.std())


def test_pairwise_loss_is_one_factor_times_T():
    """Per sample, (pairwise - prior) / T is one of the T factors of L."""
    model = small_ntm((1, 4, 4), steps=3, patch_size=2, num_classes=0, std=0.2)
    g = torch.Generator().manual_seed(1)
    X, t = model.forward_trajectory(torch.randn(50, 1, 4, 4, generator=g, dtype=torch.float64),
                                    generator=g)
    with torch.no_grad():
        levels = model.predict_levels(X, t)
        pw = loss_from_levels(model, X, levels, trajectory_loss="pairwise",
                                    generator=torch.Generator().manual_seed(2))
        U, logdet, mu, ls = levels
        factors = (0.5 * ((U - mu) / ls.exp()) ** 2 + ls + 0.5 * math.log(2 * math.pi)
                   ).sum(-1) - logdet                                          # [B, T]
        x1 = X[:, -1].reshape(50, -1)
        prior = 0.5 * x1.pow(2).sum(1) + 16 * 0.5 * math.log(2 * math.pi)
        e2e = loss_from_levels(model, X, levels)
    assert torch.allclose(e2e, factors.sum(1) + prior, rtol=1e-12)
    picked = ((pw - prior) / 3).unsqueeze(1)
    hits = torch.isclose(picked, factors, rtol=1e-10, atol=1e-10)
    assert (hits.sum(1) == 1).all()
    assert len(set(hits.long().argmax(1).tolist())) == 3     # every slot gets drawn
    with pytest.raises(ValueError, match="trajectory_loss"):
        loss_from_levels(model, X, levels, trajectory_loss="pairs")
