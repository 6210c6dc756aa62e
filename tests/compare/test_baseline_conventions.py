"""diffusers' flow schedulers driven by our velocity convention: on Gaussian data, whose exact
velocity and flow map are known, every scheduler's samples have the data's moments, each
sample lands on the exact flow map's image of its noise, and a wrong sign or a reversed time
fails the same checks."""
import math

import pytest
import torch

pytest.importorskip("diffusers")
# diffusers builds numpy arrays from tensors the way numpy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")

from ntm_engine.compare.gaussian import gaussian_velocity, moment_errors  # noqa: E402
from ntm_engine.compare.schedulers import (SCHEDULERS, fm_velocity,  # noqa: E402
                                             make_scheduler, sample_with_scheduler,
                                             set_steps)

MEAN, STD = 1.0, 0.5
SHAPE = (25_000, 4)          # 100k pooled values: standard error of the std 0.0011
Z = 5.0                      # standard errors allowed for sampling noise
# Discretisation allowance at 50 steps, relative to STD.  Euler is first order: its std falls
# short by about 1.5/steps of STD (measured 3.0% at 50 steps, 6.0% at 25); the second-order
# schedulers are within 0.5% (Heun 0.02%, UniPC 0.13%, DPM-Solver++ 0.45%).
ALLOWANCE = {"flow_euler": 0.04, "flow_heun": 0.01, "dpmpp_2m": 0.01, "unipc": 0.01}


def gaussian_mismatch(samples, allowance):
    """Names of the moments of ``samples`` that miss N(MEAN, STD^2) by more than Z standard
    errors plus ``allowance * STD`` (empty: they match)."""
    e = moment_errors(samples, MEAN, STD)
    se = {"mean": STD / math.sqrt(e["n"]), "std": STD / math.sqrt(2 * (e["n"] - 1))}
    return [k for k in ("mean", "std")
            if not abs(e[f"{k}_error"]) <= Z * se[k] + allowance * STD]


def run(name, velocity, steps=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return sample_with_scheduler(velocity, name, steps, SHAPE, g, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_fifty_steps_match_the_data_moments(name):
    x, _ = run(name, gaussian_velocity(MEAN, STD))
    assert torch.isfinite(x).all()
    assert gaussian_mismatch(x, ALLOWANCE[name]) == []


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_wrong_sign_or_reversed_time_fails_the_check(name):
    v = gaussian_velocity(MEAN, STD)
    wrong = {"negated velocity": lambda x, t, tn: -v(x, t, tn),
             "reversed time": lambda x, t, tn: v(x, 1 - t, 1 - tn)}
    for what, fn in wrong.items():
        x, _ = run(name, fn)
        assert gaussian_mismatch(x, ALLOWANCE[name]), f"{name}: {what} passed the check"


# Largest error of a sample at 50 steps, relative to STD, over shifts 1 and 3 (float64, so the
# same everywhere): first-order Euler ~ 4.4 * shift^0.6 / steps (measured 0.088 and 0.17); the
# second-order solvers far less (DPM-Solver++ 2M 0.015 and 0.029, UniPC 0.0039 and 0.010,
# Heun 0.00055 and 0.0012).  A wrong sign, time direction or sigma grid misses by O(1).
BOUND_AT_50 = {"flow_euler": 0.2, "dpmpp_2m": 0.04, "unipc": 0.015, "flow_heun": 0.002}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_each_sample_converges_to_the_exact_flow_map(name, shift):
    """The ODE maps noise e to MEAN + STD * e exactly; each sample's error is small at 50
    steps and shrinks with the step count.  (Not monotonically for the multistep solvers, whose
    error changes sign near 25 steps with shift 3, and with a floor from float32 sigmas and
    DPM-Solver++'s start at sigma 0.999: hence 25 against 200 steps, by a factor 3.)"""
    e = torch.linspace(-3, 3, 13, dtype=torch.float64).view(13, 1)
    v = gaussian_velocity(MEAN, STD)
    err = {}
    for steps in (25, 50, 200):
        x, _ = sample_with_scheduler(v, name, steps, e.shape, noise=e, dtype=torch.float64,
                                     shift=shift)
        err[steps] = float((x - (MEAN + STD * e)).abs().max()) / STD
    assert err[50] < BOUND_AT_50[name], err
    assert err[200] < err[25] / 3


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_model_times_are_the_schedulers_sigmas(name):
    """The velocity is evaluated at sigmas[i], which is the scheduler's timesteps[i] / 1000 up
    to the integer rounding of the multistep schedulers; sigmas run from about 1 to 0 on the
    shifted schedule."""
    sched = make_scheduler(name, shift=3.0)
    set_steps(sched, 10)
    ts = sched.timesteps.double() / sched.config.num_train_timesteps
    sig = sched.sigmas.double()[:len(ts)]
    assert (ts - sig).abs().max() <= 1e-3
    assert sig[0] > 0.998 and float(sched.sigmas[-1]) == 0.0
    assert (sig[1:] <= sig[:-1]).all()


@pytest.mark.parametrize("name,steps,nfe", [
    ("flow_euler", 1, 1), ("flow_euler", 7, 7), ("flow_heun", 1, 1), ("flow_heun", 7, 13),
    ("dpmpp_2m", 7, 7), ("unipc", 7, 7)])
def test_nfe_counts_velocity_calls(name, steps, nfe):
    calls = []

    def v(x, t, tn):
        calls.append((float(t[0]), float(tn[0])))
        assert t.shape == tn.shape == (x.shape[0],)
        return torch.zeros_like(x)
    x, n = sample_with_scheduler(v, name, steps, (3, 2), torch.Generator().manual_seed(0))
    assert n == len(calls) == nfe
    times = [t for t, _ in calls]
    assert times[0] > 0.99 and all(tn < t for t, tn in calls)
    assert all(b <= a for a, b in zip(times, times[1:]))


@pytest.mark.parametrize("shift,guidance", [(1.0, 0.0), (3.0, 0.0), (1.0, 1.5)])
def test_euler_matches_the_flow_matching_model_sampler(shift, guidance):
    """The adapter passes the model's own (t, t_next) and the Euler scheduler steps on the
    model's own shifted grid: from the same noise, diffusers' Euler equals
    FlowMatchingModel.sample (x <- x - (t_k+1 - t_k) v(x, t_k+1, t_k)), up to float32 sigmas,
    with classifier-free guidance too."""
    from ntm_engine.models import FlowMatchingModel

    torch.manual_seed(0)
    fm = FlowMatchingModel((1, 4, 4), steps=2, num_classes=3, width=32, depth=1, heads=2,
                           patch_size=2, shift=shift).eval()
    for p in fm.parameters():   # leave the zero-initialised heads: a non-trivial velocity
        p.data.add_(0.05 * torch.randn_like(p))
    y = torch.tensor([0, 1, 2, 1])
    ours = fm.sample(4, y=y, steps=4, guidance=guidance,
                     generator=torch.Generator().manual_seed(3))
    theirs, nfe = sample_with_scheduler(fm_velocity(fm, y, guidance), "flow_euler", 4,
                                        (4, 1, 4, 4), torch.Generator().manual_seed(3),
                                        shift=shift)
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    assert nfe == 4
    assert (ours - noise).abs().max() > 0.1
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    if guidance:
        plain = fm.sample(4, y=y, steps=4, generator=torch.Generator().manual_seed(3))
        assert (plain - ours).abs().max() > 1e-3   # the guidance did something
        with pytest.raises(ValueError, match="guidance needs labels y"):
            fm_velocity(fm, None, guidance)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(scheduler_name="ddim"), "scheduler_name must be one of"),
    (dict(steps=0), "steps must be a positive integer, got 0"),
    (dict(shape=(4,)), "shape must be [B, *data_shape]"),
    (dict(noise=torch.zeros(3, 2)), "noise must have shape [4, 2], got [3, 2]"),
    (dict(shift=0.0), "shift must be > 0, got 0.0"),
])
def test_bad_arguments_are_named(kwargs, needle):
    args = {**dict(velocity_fn=gaussian_velocity(0.0, 1.0), scheduler_name="unipc", steps=4,
                   shape=(4, 2)), **kwargs}
    with pytest.raises(ValueError) as exc:
        sample_with_scheduler(**args)
    assert needle in str(exc.value)
