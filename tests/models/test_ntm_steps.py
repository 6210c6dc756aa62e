"""Several step counts in one model, and the time shift."""
import math
import warnings

import pytest
import torch

from ntm_engine.models import NTM, FlowMatchingModel, schedule
from ntm_engine.models.flow_matching import ntm_from_flow_matching
from ntm_engine.models.loss import training_groups

from _ntm_testutils import perturb, small_ntm


def multi_ntm(steps=(2, 3), num_classes=3, **kw):
    model = small_ntm((1, 4, 4), steps=steps, patch_size=2, num_classes=num_classes, **kw)
    perturb(model.predictor.steps_embed, std=0.5, seed=3)      # make T matter
    return model


def test_single_step_count_keeps_the_state_dict_and_config():
    for steps in (4, (4,)):
        model = NTM((1, 4, 4), steps=steps, width=32, depth=1, heads=2, patch_size=2)
        assert model.trained_steps == (4,) and model.steps == 4 and not model.multi_steps
        assert not any("steps_embed" in k for k in model.state_dict())
    assert NTM((2,), steps=4, width=16, depth=1, heads=2).config["steps"] == 4
    multi = NTM((2,), steps=(8, 4, 16), width=16, depth=1, heads=2)
    assert multi.trained_steps == (4, 8, 16) and multi.steps == 4
    assert multi.config["steps"] == [4, 8, 16]
    assert NTM(**multi.config).trained_steps == (4, 8, 16)      # JSON round trip
    assert "predictor.steps_embed.weight" in multi.state_dict()
    for bad in (0, (4, 0), (), "4", (2.5,)):
        with pytest.raises(ValueError, match="steps"):
            NTM((2,), steps=bad, width=16, depth=1, heads=2)


def test_samples_at_each_trained_count_and_refuses_others():
    model = multi_ntm()
    for T in (2, 3):
        x, X = model.sample(4, y=1, steps=T, generator=torch.Generator().manual_seed(T),
                            return_trajectory=True)
        assert x.shape == (4, 1, 4, 4) and X.shape == (4, T + 1, 1, 4, 4)
        assert torch.isfinite(X).all()
    for call in (lambda: model.sample(2, steps=4), lambda: model.bits_per_dim(
            torch.zeros(2, 1, 4, 4), steps=1),
                 lambda: model.forward_trajectory(torch.zeros(2, 1, 4, 4), steps=5)):
        with pytest.raises(ValueError, match=r"T = \d was not trained.*\(2, 3\)"):
            call()
    X, t = model.forward_trajectory(torch.zeros(2, 1, 4, 4), steps=3)
    with pytest.raises(ValueError, match=r"not trained"):                # T from X's shape
        model.trajectory_log_prob(torch.cat([X, X[:, :1]], dim=1),
                                  model.time_grid(2, 4, dtype=torch.float64))


def test_a_one_count_model_warns_when_sampled_at_another():
    model = small_ntm((1, 4, 4), steps=2, patch_size=2, num_classes=0)
    with pytest.warns(UserWarning, match=r"steps=3, but this model was trained on T = 2 only"):
        x = model.sample(2, steps=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.sample(2, steps=2, generator=torch.Generator().manual_seed(0))
        model.sample(2, generator=torch.Generator().manual_seed(0))


def test_the_predictor_sees_the_step_count():
    model = multi_ntm()
    g = torch.Generator().manual_seed(0)
    X, t = model.forward_trajectory(torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64),
                                    generator=g, steps=3)
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        U, _, mu, ls = model.predict_levels(X, t, y)
        u_in = model.slot_inputs(U, X)
        mu3, ls3 = model.predictor(u_in, t[:, :3], t[:, 1:], y, steps=torch.full((3,), 3))
        mu2, _ = model.predictor(u_in, t[:, :3], t[:, 1:], y, steps=torch.full((3,), 2))
    assert torch.equal(mu, mu3) and torch.equal(ls, ls3)
    assert (mu - mu2).abs().max() > 1e-3
    with pytest.raises(ValueError, match="steps"):
        model.predictor(u_in, t[:, :3], t[:, 1:], y)


class _RecordingIdentity(torch.nn.Module):
    """An identity transporter that takes ``steps`` and records what it got."""
    step_conditioned = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, y=None, *, steps=None):
        self.seen.append(steps)
        return x, x.new_zeros(x.shape[0])

    def inverse(self, u, t, y=None, *, steps=None):
        self.seen.append(steps)
        return u, u.new_zeros(u.shape[0])


def test_training_draws_the_step_count_per_example():
    model = multi_ntm().train()
    model.transporter = _RecordingIdentity()
    x = torch.randn(40, 1, 4, 4, dtype=torch.float64)
    y = torch.arange(40) % 3
    groups = training_groups(model, x, y, torch.Generator().manual_seed(0))
    idx = torch.cat([g[0] for g in groups])
    assert sorted(idx.tolist()) == list(range(40))               # each example once
    assert [g[1].shape[1] - 1 for g in groups] == [2, 3]         # both T drawn
    for i, X, t, _ in groups:
        t0 = t[:, 0].view(-1, 1, 1, 1)
        assert ((X[:, 0] - (1 - t0) * x[i]) / t0).abs().max() < 6   # x_{t_0} of x[i]
        assert t.shape == (len(i), X.shape[1])
    # the loss is each group's trajectory NLL in the batch's order, with the same draws
    loss = model.trajectory_nll(x, y, generator=torch.Generator().manual_seed(0))
    model.transporter.seen.clear()
    for i, X, t, yg in training_groups(model, x, y, torch.Generator().manual_seed(0)):
        assert torch.allclose(loss[i], -model.trajectory_log_prob(X, t, yg), rtol=1e-12)
    rows = [s for s in model.transporter.seen if s is not None]
    assert {int(s.unique()) for s in rows} == {2, 3}             # the transporter got T
    # the steps embedding is trained
    loss.mean().backward()
    assert model.predictor.steps_embed.weight.grad.abs().min() > 0


def test_sampling_gives_the_transporter_the_sampled_step_count():
    model = multi_ntm().eval()
    model.transporter = _RecordingIdentity()
    for T in (2, 3):
        model.transporter.seen.clear()
        model.sample(2, y=1, steps=T, guidance=1.0, return_trajectory=True)
        model.sample(2, y=1, steps=T, t_min=0.05, sampler="trajectory-denoise")
        assert model.transporter.seen and all(
            s is not None and (s == T).all() for s in model.transporter.seen)


def test_auto_shift_is_the_papers_rule():
    assert schedule.auto_shift(256) == pytest.approx(math.exp(0.5), rel=1e-15)
    assert schedule.auto_shift(4096) == pytest.approx(math.exp(1.15), rel=1e-15)
    digits = NTM.for_digits(shift="auto", width=32, depth=1, heads=2)
    assert digits.predictor.tokens == 4
    assert digits.shift == pytest.approx(math.exp(0.5 + 0.65 * (4 - 256) / 3840), rel=1e-15)
    assert digits.config["shift"] == "auto"
    t = digits.time_grid(1, steps=4, dtype=torch.float64)[0]
    r = torch.arange(5, dtype=torch.float64) / 4
    assert torch.allclose(t[1:], (digits.shift * r / (1 + (digits.shift - 1) * r))[1:])
    assert NTM((2,), shift=None, width=16, depth=1, heads=2).shift == 1.0
    for bad in ("fast", 0.0, -1):
        with pytest.raises(ValueError, match="shift"):
            NTM((2,), shift=bad, width=16, depth=1, heads=2)


def test_flow_matching_weights_start_a_multi_step_ntm():
    torch.manual_seed(0)
    fm = FlowMatchingModel((1, 4, 4), steps=(2, 4), width=32, depth=1, heads=2, patch_size=2,
                           shift="auto").double()
    perturb(fm, std=0.1)
    assert fm.steps == 4 and fm.shift == schedule.auto_shift(4)
    multi, single = ntm_from_flow_matching(fm), ntm_from_flow_matching(fm, steps=4)
    assert multi.trained_steps == (2, 4) and multi.shift == fm.shift
    g = torch.Generator().manual_seed(0)
    X, t = single.forward_trajectory(torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64),
                                     generator=g)
    with torch.no_grad():   # the step-count embedding starts at zero: same predictions
        a, b = multi.predict_levels(X, t), single.predict_levels(X, t)
    assert all(torch.allclose(u, v, rtol=1e-12, atol=1e-12) for u, v in zip(a, b))
    assert a[2].abs().max() > 0
