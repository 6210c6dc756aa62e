"""The predictor never sees a cleaner level: exact (bit-identical) causality checks."""
import pytest
import torch

from ntm_engine.models import block_causal_mask

from _ntm_testutils import COND_KINDS, condition_of, conditioned_ntm, small_ntm


def test_block_causal_mask_layout():
    m = block_causal_mask(3, 2)
    slot = torch.tensor([0, 0, 1, 1, 2, 2])
    for i in range(6):
        for j in range(6):
            assert bool(m[i, j]) == bool(slot[j] >= slot[i])


@pytest.mark.parametrize("kind", COND_KINDS)
@pytest.mark.parametrize("parameterization", ["gaussian", "flow_matching"])
@pytest.mark.parametrize("data_shape,patch", [((1, 4, 4), 2), ((3, 2, 4), 2), ((6,), 3),
                                              ((2,), 2)])
def test_cleaner_level_never_leaks(data_shape, patch, parameterization, kind):
    """Also with condition tokens: their prefix, visible to every slot, must not carry a
    cleaner level to a noisier slot."""
    T = 4
    model = conditioned_ntm(kind, data_shape, steps=T, patch_size=patch,
                            parameterization=parameterization)
    g = torch.Generator().manual_seed(1)
    B = 5
    x = torch.randn(B, *data_shape, generator=g, dtype=torch.float64)
    y = condition_of(kind, B, seed=1)
    X, t = model.forward_trajectory(x, generator=g, t_min=0.02)
    with torch.no_grad():
        U0, _, mu0, ls0 = model.predict_levels(X, t, y)
        for k in range(T + 1):               # perturb level k (k = T is x_1)
            X2 = X.clone()
            X2[:, k] += torch.randn(X2[:, k].shape, generator=g, dtype=X.dtype)
            U, _, mu, ls = model.predict_levels(X2, t, y)
            for j in range(T):               # slot j predicts level j
                same = torch.equal(mu[:, j], mu0[:, j]) and torch.equal(ls[:, j], ls0[:, j])
                if j >= k:
                    assert same, f"perturbing level {k} moved the prediction of level {j}"
                else:
                    assert (mu[:, j] - mu0[:, j]).abs().min() > 0, (k, j)
                    assert (ls[:, j] - ls0[:, j]).abs().max() > 0, (k, j)
            # the transporter is per level: only U[:, k] moves
            for j in range(T):
                assert torch.equal(U[:, j], U0[:, j]) == (j != k)


@pytest.mark.parametrize("parameterization", ["gaussian", "flow_matching"])
def test_prediction_of_a_level_ignores_its_own_value(parameterization):
    """Slot k reads u_{t_{k+1}}: the likelihood of level k is autoregressive in levels."""
    model = small_ntm((1, 4, 4), steps=3, patch_size=2, parameterization=parameterization)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    X, t = model.forward_trajectory(x, generator=g)
    X.requires_grad_(True)
    _, _, mu, ls = model.predict_levels(X, t, torch.tensor([0, 1, 2, 0]))
    for j in range(3):
        (gx,) = torch.autograd.grad((mu[:, j].sum() + ls[:, j].sum()), X, retain_graph=True)
        assert gx[:, : j + 1].abs().max() == 0       # levels <= j: no influence at all
        assert gx[:, j + 1:].abs().max() > 0


def test_patches_round_trip():
    model = small_ntm((3, 4, 8), steps=2, patch_size=2)
    p = model.predictor
    v = torch.randn(5, 96, dtype=torch.float64)
    patches = p.patchify(v)
    assert patches.shape == (5, 8, 12)
    assert torch.equal(p.unpatchify(patches), v)
    img = v.view(5, 3, 4, 8)          # patch (1, 2): rows 0-1, columns 4-5, all channels
    assert torch.equal(patches[:, 2], img[:, :, 0:2, 4:6].reshape(5, 12))
