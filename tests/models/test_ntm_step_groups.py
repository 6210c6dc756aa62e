"""The static step-count groups of a training batch (``ntm_engine.models.loss``): sizes
fixed by ``(B, K)``, samples dealt by a random permutation, weights that keep every sample's
expected loss the mean over the trained counts."""
import math

import pytest
import torch

from ntm_engine.models import NTM, schedule
from ntm_engine.models.loss import (StepGroups, group_sizes, group_weights, training_groups,
                                    training_trajectory)

COUNTS = (2, 4, 8)


def toy_ntm(steps=COUNTS, step_shares=None) -> NTM:
    """A tiny 2-D NTM in training mode (only its draws are used here)."""
    torch.manual_seed(0)
    return NTM((2,), steps=steps, width=16, depth=1, heads=2, transporter_layers=1,
               transporter_hidden=8, shift=0.5, step_shares=step_shares).double().train()


@pytest.mark.parametrize("batch", [3, 4, 5, 7, 64, 65])
def test_group_sizes_are_near_equal_and_fixed_by_batch_and_counts(batch):
    sizes = group_sizes(batch, COUNTS)
    assert len(sizes) == 3 and sum(sizes) == batch
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert list(sizes) == sorted(sizes, reverse=True)          # the extra ones go first
    assert group_sizes(batch, (16, 32, 64)) == sizes           # only K matters


@pytest.mark.parametrize("batch", [3, 4, 5, 7, 64, 65, 1000])
def test_weights_times_membership_probability_is_one_over_K(batch):
    """``P(sample in group i) * w_i = (s_i / B) * B / (K s_i) = 1 / K``: each count gets the
    same expected share of every sample's loss; equal sizes give weights of exactly 1."""
    sizes = group_sizes(batch, COUNTS)
    weights = group_weights(sizes)
    for s, w in zip(sizes, weights):
        assert s / batch * w == pytest.approx(1 / 3, rel=1e-15)
    assert (all(w == 1.0 for w in weights)) == (batch % 3 == 0)


@pytest.mark.parametrize("batch", [0, 1, 2])
def test_a_batch_smaller_than_the_number_of_counts_is_refused(batch):
    x = torch.zeros(batch, 2, dtype=torch.float64)
    msg = (rf"a batch of {batch} sample\(s\) cannot give each of the 3 trained step counts "
           r"\(2, 4, 8\).*--batch-size.*at least 3 samples.*--steps")
    with pytest.raises(ValueError, match=msg):
        toy_ntm().trajectory_nll(x, generator=torch.Generator().manual_seed(0))


def test_each_batch_deals_every_sample_once_to_groups_of_the_static_sizes():
    model = toy_ntm()
    x = torch.randn(7, 2, dtype=torch.float64)
    groups = training_groups(model, x, generator=torch.Generator().manual_seed(0))
    assert [len(g[0]) for g in groups] == [3, 2, 2]
    assert [g[1].shape[1] - 1 for g in groups] == list(COUNTS)
    assert sorted(torch.cat([g[0] for g in groups]).tolist()) == list(range(7))
    assert groups.weights == (7 / 9, 7 / 6, 7 / 6)


def test_each_sample_meets_each_count_with_the_expected_frequency():
    """Over ``N`` batches of ``B = 5`` (sizes 2, 2, 1), sample ``j`` lands in group ``i`` with
    frequency ``s_i / B`` (within 5 binomial standard deviations), and the values of
    :meth:`StepGroups.combine` of a known per-(sample, count) table ``c`` average to the mean of
    ``c`` over the counts: the estimator is the uniform-``T`` one in expectation."""
    B, N = 5, 3000
    freq, mean, c = draws_over_batches(toy_ntm(), B, N)
    p = torch.tensor(group_sizes(B, COUNTS), dtype=torch.float64) / B
    sd = (p * (1 - p) / N).sqrt()
    assert ((freq - p).abs() <= 5 * sd).all(), freq
    w = torch.tensor(group_weights(group_sizes(B, COUNTS)), dtype=torch.float64)
    sd_mean = ((p * (w * c) ** 2).sum(1) - c.mean(1) ** 2).sqrt() / math.sqrt(N)
    assert ((mean - c.mean(1)).abs() <= 5 * sd_mean).all()


def draws_over_batches(model: NTM, B: int, N: int, sizes=None):
    """``(freq [B, K], mean [B], c [B, K])`` over ``N`` batches of ``B`` samples: how often
    sample ``j`` landed in group ``i``, and the mean of :meth:`StepGroups.combine` of a fixed
    random per-(sample, count) table ``c`` (each batch's group sizes checked against
    ``sizes`` when given)."""
    x = torch.randn(B, 2, dtype=torch.float64)
    K = len(model.trained_steps)
    c = torch.rand(B, K, generator=torch.Generator().manual_seed(9), dtype=torch.float64) + 1
    hits = torch.zeros(B, K, dtype=torch.float64)
    total = torch.zeros(B, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    for _ in range(N):
        groups = training_groups(model, x, generator=g)
        if sizes is not None:
            assert [len(gr[0]) for gr in groups] == list(sizes)
        for i, (idx, *_rest) in enumerate(groups):
            hits[idx, i] += 1
        total += groups.combine([c[idx, i] for i, (idx, *_r) in enumerate(groups)])
    return hits / N, total / N, c


def test_loss_is_each_groups_trajectory_nll_times_its_weight():
    """A batch of 7 over (2, 4, 8): each sample's value is its group's weight times the NLL of
    its own trajectory (the same draws replayed), in the batch's order, with gradients."""
    model = toy_ntm()
    x = torch.randn(7, 2, dtype=torch.float64)
    loss = model.trajectory_nll(x, generator=torch.Generator().manual_seed(0))
    groups = training_groups(model, x, generator=torch.Generator().manual_seed(0))
    for (i, X, t, _), w in zip(groups, groups.weights):
        torch.testing.assert_close(loss[i], -w * model.trajectory_log_prob(X, t),
                                   rtol=1e-12, atol=0)
    loss.sum().backward()
    assert all(p.grad is not None for p in model.predictor.parameters())


@pytest.mark.parametrize("shares", [(2, 1, 1), (4, 2, 1), (1, 5, 3), (100, 1, 1)])
@pytest.mark.parametrize("batch", [3, 5, 7, 64, 128, 1000])
def test_unequal_shares_give_sizes_near_batch_times_p_and_weights_that_make_the_p_mixture(
        shares, batch):
    """``s_i`` within 1 of ``B p_i`` unless the minimum of one sample per count intervenes,
    sizes sum to ``B``; ``P(sample in group i) * w_i = (s_i / B) (B p_i / s_i) = p_i``."""
    p = schedule.step_shares(shares, COUNTS)
    assert sum(p) == pytest.approx(1.0, rel=1e-15)
    sizes = group_sizes(batch, COUNTS, p)
    assert sum(sizes) == batch and min(sizes) >= 1
    lifted = any(batch * q < 1 for q in p)        # the minimum of one sample per count
    for s, q in zip(sizes, p):
        if batch * q < 1:
            assert s == 1
        elif lifted:
            assert 1 <= s <= math.ceil(batch * q)
        else:
            assert abs(s - batch * q) < 1
    for s, w, q in zip(sizes, group_weights(sizes, p), p):
        assert s / batch * w == pytest.approx(q, rel=1e-14)
    assert group_sizes(batch, COUNTS, schedule.step_shares((1, 1, 1), COUNTS)) == \
        group_sizes(batch, COUNTS)                             # equal shares: as without


def test_shares_change_how_often_each_count_is_drawn_and_the_mixture_the_loss_estimates():
    """``step_shares = (3, 1, 1)`` on batches of 10 (sizes 6, 2, 2): sample ``j`` lands at
    ``T = 2`` with frequency 0.6, and :meth:`StepGroups.combine` of a known table ``c``
    averages to ``sum_i p_i c_i`` (within 5 standard errors)."""
    model = toy_ntm()
    model_shared = toy_ntm(step_shares=(3, 1, 1))
    assert model.step_shares is None and model_shared.step_shares == (0.6, 0.2, 0.2)
    assert model_shared.config["step_shares"] == [3.0, 1.0, 1.0]
    B, N = 10, 3000
    freq, mean, c = draws_over_batches(model_shared, B, N, sizes=(6, 2, 2))
    p = torch.tensor([0.6, 0.2, 0.2], dtype=torch.float64)
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / N).sqrt()).all(), freq
    expected = (c * p).sum(1)
    sd_mean = ((p * c ** 2).sum(1) - expected ** 2).sqrt() / math.sqrt(N)
    assert ((mean - expected).abs() <= 5 * sd_mean).all()
    assert ((mean - c.mean(1)).abs() > 5 * sd_mean).any()   # not the uniform mixture


@pytest.mark.parametrize("shares, msg", [
    ((1, 1), r"step_shares must hold 3 positive finite numbers, one per trained step count "
             r"\(2, 4, 8\) in increasing T, got \[1, 1\]"),
    ((1, 0, 1), r"step_shares must hold 3 positive.*got \[1, 0, 1\]"),
    ((1, float("nan"), 1), r"step_shares must hold 3 positive.*got \[1, nan, 1\]"),
    ("abc", r"step_shares must be a sequence of numbers, one per trained step count"),
])
def test_bad_step_shares_are_refused_by_name(shares, msg):
    with pytest.raises(ValueError, match=msg):
        toy_ntm(step_shares=shares)


def test_a_single_step_count_keeps_its_draws_and_values():
    """One count: one group of the whole batch, values passed through untouched, and the same
    random draws as :func:`training_trajectory` (no permutation drawn)."""
    model = toy_ntm(steps=4)
    x = torch.randn(5, 2, dtype=torch.float64)
    groups = training_groups(model, x, generator=torch.Generator().manual_seed(0))
    X, t, _ = training_trajectory(model, x, generator=torch.Generator().manual_seed(0))
    assert len(groups) == 1 and groups[0][0] is None and groups.perm is None
    assert torch.equal(groups[0][1], X) and torch.equal(groups[0][2], t)
    v = torch.randn(5)
    assert groups.combine([v]) is v


def test_combine_checks_its_input():
    groups = StepGroups([(torch.arange(2), None, None, None), (torch.arange(2, 3), None, None,
                                                               None)],
                        torch.tensor([2, 0, 1]), (0.75, 1.5))
    out = groups.combine([torch.tensor([1.0, 2.0]), torch.tensor([4.0])])
    assert out.tolist() == [2 * 0.75, 4 * 1.5, 1 * 0.75]      # out[perm] = weighted values
    with pytest.raises(ValueError, match=r"values must have one tensor per group \(2\), got 1"):
        groups.combine([torch.zeros(3)])
    with pytest.raises(ValueError, match=r"weights must have one entry per group \(2\), got 1"):
        StepGroups(groups.groups, groups.perm, (1.0,))


@pytest.mark.cuda
def test_no_host_sync_on_a_gpu_in_training_bits_per_dim_and_sampling():
    """``torch.cuda.set_sync_debug_mode("error")`` turns every host sync (``nonzero``,
    ``.item()``, a blocking copy) into an error: the training step (forward and backward) of
    a model trained on (2, 4, 8) with unequal groups, and bits/dim and sampling at each T."""
    torch.manual_seed(0)
    model = NTM.for_digits(width=32, depth=1, heads=2, steps=COUNTS, transporter_hidden=32,
                           transporter_layers=2).cuda().train()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(7, 1, 8, 8, device="cuda", generator=g) * 2 - 1
    y = torch.randint(10, (7,), device="cuda", generator=g)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model.trajectory_nll(x, y, generator=g).mean().backward()
        model.eval()
        for T in COUNTS:
            model.bits_per_dim(x, y, bins=17, generator=g, steps=T)
            model.sample(3, y=1, steps=T, generator=g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
