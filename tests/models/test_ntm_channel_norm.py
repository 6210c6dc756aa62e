"""The fixed channel normalisation of latent data (models/normalization.py): the model works
on ``(x - mean_c) / scale_c``, samples come back in the data's scale, and the likelihood is
the density of the data (scaling the data by 2 shifts nats/dim by exactly log 2)."""
import math

import pytest
import torch

from ntm_engine.models import NTM, FlowMatchingModel
from ntm_engine.models.normalization import ChannelNorm

from _ntm_testutils import small_ntm

SHAPE = (4, 4, 4)
MEAN, SCALE = [1.0, -2.0, 0.5, 30.0], [0.25, 3.0, 1.0, 10.0]


def pair(**kw):
    """The same weights with and without the normalisation."""
    plain = small_ntm(SHAPE, num_classes=0, **kw)
    normed = small_ntm(SHAPE, num_classes=0, channel_mean=MEAN, channel_scale=SCALE, **kw)
    normed.load_state_dict(plain.state_dict())
    return plain, normed


def channels(v):
    return torch.tensor(v, dtype=torch.float64).view(-1, 1, 1)


def test_the_normalisation_adds_no_weights_and_is_kept_in_the_config(tmp_path):
    plain, normed = pair()
    assert plain.state_dict().keys() == normed.state_dict().keys()
    assert plain.config["channel_mean"] is None and normed.config["channel_scale"] == SCALE
    again = NTM.from_pretrained(normed.save_pretrained(tmp_path / "m"))
    assert again.norm.mean == tuple(MEAN) and again.norm.scale == tuple(SCALE)


def test_samples_come_back_in_the_datas_scale():
    plain, normed = pair()
    g = lambda: torch.Generator().manual_seed(3)   # noqa: E731
    z = plain.sample(5, generator=g())
    x, X = normed.sample(5, generator=g(), return_trajectory=True)
    torch.testing.assert_close(x, channels(MEAN) + channels(SCALE) * z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(normed.sample(5, generator=g()), x, rtol=0, atol=0)
    # the trajectory stays in the model's space (its level 0 is the normalised sample)
    torch.testing.assert_close(X[:, 0], z, rtol=0, atol=1e-12)
    # and the forward trajectory of data starts from the normalised data
    Xf, _ = normed.forward_trajectory(x, torch.Generator().manual_seed(1), t_min=0.0)
    Xp, _ = plain.forward_trajectory(z, torch.Generator().manual_seed(1), t_min=0.0)
    torch.testing.assert_close(Xf, Xp, rtol=1e-10, atol=1e-10)


def test_flow_matching_model_normalises_its_data_too():
    cfg = dict(data_shape=SHAPE, steps=3, width=32, depth=1, heads=2)
    torch.manual_seed(0)
    plain = FlowMatchingModel(**cfg).double()
    normed = FlowMatchingModel(**cfg, channel_mean=MEAN, channel_scale=SCALE).double()
    normed.load_state_dict(plain.state_dict())
    z = torch.randn(6, *SHAPE, dtype=torch.float64)
    x = channels(MEAN) + channels(SCALE) * z
    g = lambda: torch.Generator().manual_seed(2)   # noqa: E731
    torch.testing.assert_close(normed.loss(x, generator=g()), plain.loss(z, generator=g()))
    torch.testing.assert_close(normed.sample(3, steps=4, generator=g()),
                               channels(MEAN) + channels(SCALE) *
                               plain.sample(3, steps=4, generator=g()))


@pytest.mark.parametrize("samples", [1, 3])
def test_scaling_the_data_by_two_shifts_nats_per_dim_by_log_two(samples):
    """The normalisation of ``2 x`` (twice the mean and scale) gives the model the very same
    input, so only the log-Jacobian changes: ``-D log 2`` per sample, exactly ``log 2`` per
    dimension (with the single-trajectory and the importance-weighted bound)."""
    _, a = pair()
    b = small_ntm(SHAPE, num_classes=0, channel_mean=[2 * m for m in MEAN],
                  channel_scale=[2 * s for s in SCALE])
    b.load_state_dict(a.state_dict())
    x = channels(MEAN) + channels(SCALE) * torch.randn(7, *SHAPE, dtype=torch.float64)
    with torch.no_grad():
        n1 = a.nats_per_dim(x, generator=torch.Generator().manual_seed(5), samples=samples)
        n2 = b.nats_per_dim(2 * x, generator=torch.Generator().manual_seed(5), samples=samples)
        lp = a.log_prob(x, generator=torch.Generator().manual_seed(5), samples=samples)
    torch.testing.assert_close(n2 - n1, torch.full_like(n1, math.log(2)), rtol=0, atol=1e-9)
    torch.testing.assert_close(n1, -lp / a.dim, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mean, scale, match", [
    ([0.0] * 3, [1.0] * 4, "channel_mean must be 4 finite numbers"),
    ([0.0] * 4, [1.0, 1.0, float("nan"), 1.0], "channel_scale must be 4 finite numbers"),
    ([0.0] * 4, [1.0, 0.0, 1.0, 1.0], "channel_scale must be > 0 for every channel"),
    ([0.0] * 4, None, "channel_mean and channel_scale go together"),
    (0.5, [1.0] * 4, "channel_mean must be a list of 4 numbers"),
])
def test_a_bad_normalisation_is_refused_naming_the_option(mean, scale, match):
    with pytest.raises(ValueError, match=match):
        NTM(SHAPE, steps=2, width=16, depth=1, heads=2, channel_mean=mean, channel_scale=scale)


def test_log_det_counts_every_value_of_a_channel():
    norm = ChannelNorm(SHAPE, MEAN, SCALE)
    assert norm.log_det() == pytest.approx(-16 * sum(math.log(s) for s in SCALE), abs=1e-12)
    assert ChannelNorm(SHAPE).log_det() == 0.0 and ChannelNorm(SHAPE).identity
