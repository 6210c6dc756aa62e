"""Resampling: the reverse steps continued from the noisier levels of a data point's own
forward trajectory (``NTM.resample``, ``sampler.reverse_levels(kept=...)``)."""
import pytest
import torch

from ntm_engine.models.sampler import reverse_levels

from _ntm_testutils import COND_KINDS, condition_of, conditioned_ntm, small_ntm

T = 3


@pytest.mark.parametrize("kind", COND_KINDS)
@pytest.mark.parametrize("guidance", [0.0, 1.5])
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("j", [1, 2, 3])
def test_kept_levels_continue_the_sampler_exactly(j, use_cache, guidance, kind):
    """Given the levels ``j..T`` of a trajectory the sampler drew, and the noise it drew
    after them, the continuation redraws exactly its levels below ``j``."""
    model = conditioned_ntm(kind, (1, 4, 4), steps=T, patch_size=2, std=0.2)
    n = 4
    y = model.resolve_condition(condition_of(kind, n), n, "cpu")
    t = model.time_grid(n, T, dtype=torch.float64)
    with torch.no_grad():
        U = reverse_levels(model, t, y, guidance=guidance, use_cache=use_cache,
                           generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)
        for _ in range(T + 1 - j):   # u_1, then one z per step down to level j
            torch.randn(n, model.dim, generator=g, dtype=torch.float64)
        U2 = reverse_levels(model, t, y, guidance=guidance, use_cache=use_cache, generator=g,
                            kept=U[j:])
    for k in range(T + 1):
        assert torch.allclose(U2[k], U[k], rtol=0, atol=1e-12), k


@pytest.mark.parametrize("steps", [2, 4])
def test_the_last_step_is_the_teacher_forced_conditional(steps):
    """``keep=1`` at temperature 0 gives ``f_T^{-1}(mu_0)`` of the training-time (teacher
    forced) pass over the same forward trajectory of ``x``."""
    model = small_ntm((1, 4, 4), steps=(2, 4), patch_size=2, std=0.2)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64) * 2 - 1
    y = torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        X, t = model.forward_trajectory(x, torch.Generator().manual_seed(3), t_min=0.0,
                                        steps=steps)
        _, _, mu, _ = model.predict_levels(X, t, y)
        want, _ = model.transport_inverse(mu[:, 0], t[:, 0], y, steps=steps)
    got = model.resample(x, y, steps, keep=1, temperature=0.0,
                         generator=torch.Generator().manual_seed(3))
    assert got.shape == x.shape
    assert torch.allclose(got.reshape(5, -1), want, rtol=0, atol=1e-12)
    # and it depends on x: another point's trajectory gives another conditional
    other = model.resample(x.flip(0), y, steps, keep=1, temperature=0.0,
                           generator=torch.Generator().manual_seed(3))
    assert (other - got).abs().max() > 1e-3


def test_keeping_only_the_noise_forgets_the_data_point():
    """``keep=T`` keeps only ``u_1`` (pure noise): the result no longer depends on ``x``;
    below ``T`` it does."""
    model = small_ntm((1, 4, 4), steps=T, patch_size=2, std=0.2)
    xa = torch.rand(6, 1, 4, 4, dtype=torch.float64) * 2 - 1
    xb = -xa
    y = torch.arange(6) % 3

    def run(x, keep):
        return model.resample(x, y, keep=keep, generator=torch.Generator().manual_seed(1))

    assert torch.equal(run(xa, T), run(xb, T))
    assert (run(xa, T - 1) - run(xb, T - 1)).abs().max() > 1e-3


def test_bad_arguments_are_refused_by_name():
    model = small_ntm((1, 4, 4), steps=T, patch_size=2)
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    for keep in (0, T + 1, 1.5, True):
        with pytest.raises(ValueError, match=r"'keep' must be an integer level in \[1, T = 3\]"):
            model.resample(x, keep=keep)
    with pytest.raises(TypeError, match="argument 'x' must be a tensor"):
        model.resample([[0.0]])
    with pytest.raises(ValueError, match="x"):
        model.resample(torch.zeros(2, 1, 4, 5, dtype=torch.float64))
    multi = small_ntm((1, 4, 4), steps=(2, 4), patch_size=2)
    with pytest.raises(ValueError, match="3"):
        multi.resample(x, steps=3)
    with pytest.raises(ValueError, match="'kept' must hold 1 to T = 3 levels"):
        reverse_levels(model, model.time_grid(2, T, dtype=torch.float64), None,
                       kept=[torch.zeros(2, 16, dtype=torch.float64)] * 4)
