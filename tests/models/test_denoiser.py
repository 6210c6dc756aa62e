"""The denoiser: identity at initialisation, input checks, its regression targets (equal to
``posterior_mean``; on the exact Gaussian model, the analytic ``E[x | x_{t_0}]``), and
``NTM.sample`` with ``t_min`` and a denoiser."""
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ntm_engine.training.objectives import distillation_batch
from ntm_engine.models import NTM, Denoiser

from _ntm_testutils import perturb, small_ntm


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- the module

@pytest.mark.parametrize("data_shape,num_classes,arch", [
    ((5,), 0, "mlp"), ((1, 4, 4), 3, "mlp"), ((2, 4, 4), 3, "conv")])
def test_new_denoiser_is_the_identity(data_shape, num_classes, arch):
    torch.manual_seed(0)
    den = Denoiser(data_shape, num_classes, arch=arch, hidden=16, blocks=2, context_dim=8)
    u = 3 * torch.randn(6, *data_shape, generator=gen(1))
    t = 0.1 * torch.rand(6, generator=gen(2))
    labelled = torch.tensor([0, 1, 2, 3, 0, 1])            # 3 = the null class
    for y in [None] + ([labelled, 2] if num_classes else []):
        assert torch.equal(den(u, t, y), u)
    assert torch.equal(den(u.double(), 0.05), u.double())   # a number for t; dtype kept
    # ... because of the zero head alone: perturbed, the output follows u, t_0 and y
    perturb(den.head, std=0.1)
    y = labelled if num_classes else None
    x = den(u, t, y)
    assert (x - u).abs().max() > 1e-3
    assert (den(u, t + 0.05, y) - x).abs().max() > 1e-5
    if num_classes:
        assert (den(u, t, None) - x).abs().max() > 1e-5


def test_denoiser_input_errors():
    den = Denoiser((1, 4, 4), 3, hidden=8, blocks=1, context_dim=8)
    u = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"u must have shape \[B, 1, 4, 4\], got \[2, 16\]"):
        den(torch.zeros(2, 16), 0.1)
    with pytest.raises(ValueError, match=r"t must be a number or have shape \[2\], got \[3\]"):
        den(u, torch.zeros(3))
    with pytest.raises(ValueError, match=r"labels y must have shape \[2\], got \[3\]"):
        den(u, 0.1, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional Denoiser"):
        Denoiser((4,), 0, hidden=8)(torch.zeros(2, 4), 0.1, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"arch 'conv' needs images \[C, H, W\], got "
                       r"data_shape \[4\]"):
        Denoiser((4,), arch="conv")
    with pytest.raises(ValueError, match="arch must be one of mlp, conv, got 'unet'"):
        Denoiser((4,), arch="unet")
    for kw, msg in ((dict(hidden=0), "hidden must be >= 1, got 0"),
                    (dict(blocks=-1), "blocks must be >= 0, got -1"),
                    (dict(context_dim=1), "context_dim must be >= 2, got 1")):
        with pytest.raises(ValueError, match=msg):
            Denoiser((4,), **kw)
    with pytest.raises(ValueError, match="num_classes must be >= 0, got -2"):
        Denoiser((4,), -2)


def test_default_denoiser_is_light_next_to_the_digits_teacher():
    """The default body (residual MLP, 256 wide, 2 blocks) against the digits NTM: under a
    third of the parameters, under 5% of the FLOPs of one 4-step sample."""
    torch.manual_seed(0)
    teacher = NTM.for_digits().eval()
    den = Denoiser.for_teacher(teacher).eval()
    y = torch.arange(4)
    with FlopCounterMode(display=False) as fc:
        teacher.sample(4, y=y, steps=4, generator=gen(0))
    teacher_flops = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        den(torch.zeros(4, 1, 8, 8), 0.05, y)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(den) < count(teacher) / 3
    assert fc.get_total_flops() < 0.05 * teacher_flops


# ----------------------------------------------------------------------------- targets

def test_target_is_the_posterior_mean_and_input_the_transporter_output():
    teacher = small_ntm((1, 4, 4), steps=3, num_classes=3, std=0.2)
    x = torch.randn(6, 1, 4, 4, generator=gen(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    b = distillation_batch(teacher, x, y, 0.1, gen(3), label_dropout=0.5)
    # the same draws by hand: the trajectory, then one uniform per label for the dropout
    g = gen(3)
    X, t = teacher.forward_trajectory(x, g, t_min=0.1)
    y_ref = torch.where(torch.rand(6, generator=g) < 0.5, torch.full_like(y, 3), y)
    assert torch.equal(b.y, y_ref) and (b.y == 3).any() and (b.y < 3).any()
    assert torch.equal(b.t0, torch.full((6,), 0.1, dtype=torch.float64))
    assert torch.equal(b.x_t0, X[:, 0])
    assert torch.equal(b.target, teacher.posterior_mean(X, t, b.y))
    u, _ = teacher.transporter(X[:, 0].reshape(6, 16), t[:, 0], b.y)
    assert torch.equal(b.u, u.view(6, 1, 4, 4))
    assert (b.u - b.x_t0).abs().max() > 1e-2          # the transporter is not the identity
    assert not b.target.requires_grad and not b.u.requires_grad


@pytest.mark.parametrize("t_d,shift", [(0.02, 1.0), (0.2, 1.0), (0.1, 0.5)])
def test_target_is_the_analytic_posterior_mean_for_gaussian_data(t_d, shift):
    """A new NTM with an identity transporter is the exact reverse process of data
    N(m, v I).  Derived independently of ``posterior_mean``: under q the chain
    x -> x_{t_0} -> x_{t_1} -> ... is Markov, so E[x | X] = E[x | x_{t_0}], and with
    x_{t_0} = (1-t_0) x + t_0 e, x ~ N(m, v):
    E[x | x_{t_0}] = m + (1-t_0) v / ((1-t_0)^2 v + t_0^2) (x_{t_0} - (1-t_0) m)."""
    m, v, D = 0.4, 0.3, 3
    torch.manual_seed(0)
    teacher = NTM((D,), steps=4, width=16, depth=1, heads=2, transporter_layers=0, shift=shift,
                  data_mean=m, data_std=math.sqrt(v)).double().eval()
    x = m + math.sqrt(v) * torch.randn(200, D, generator=gen(1), dtype=torch.float64)
    b = distillation_batch(teacher, x, None, t_d, gen(2))
    c = 1 - t_d
    ref = m + c * v / (c * c * v + t_d * t_d) * (b.x_t0 - c * m)
    # float64 throughout; the score comes from autograd through the exact NLL: ~1e-14 here
    assert torch.allclose(b.target, ref, rtol=0, atol=1e-10), (b.target - ref).abs().max()
    assert torch.equal(b.u, b.x_t0)                      # identity transporter
    assert (b.target - b.x_t0).abs().max() > 1e-2        # the correction is not negligible


# ----------------------------------------------------------------------------- sampling

class TransporterInverse(nn.Module):
    """A 'denoiser' that is exactly the model's transporter inverse, recording its inputs."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, u, t, y):
        self.calls.append((u.clone(), t.clone(), None if y is None else y.clone()))
        x, _ = self.model.transporter.inverse(u.reshape(len(u), -1), t, y)
        return x.view_as(u)


@pytest.mark.parametrize("labelled,guidance", [(False, 0.0), (True, 0.0), (True, 1.5)])
def test_denoiser_replaces_the_transporter_inverse(labelled, guidance):
    """The denoiser gets (u_{t_0}, t_0, y) and its output is the sample, nothing else moves."""
    model = small_ntm((1, 4, 4), steps=3, patch_size=2, num_classes=3, std=0.2)
    y = torch.tensor([0, 1, 2, 1]) if labelled else None
    spy = TransporterInverse(model)
    kw = dict(y=y, guidance=guidance, t_min=0.1, return_trajectory=True)
    x1, X1 = model.sample(4, generator=gen(0), **kw)
    x2, X2 = model.sample(4, generator=gen(0), denoiser=spy, **kw)
    assert torch.equal(x1, x2) and torch.equal(X1, X2)
    ((u, t, y_seen),) = spy.calls
    assert u.shape == (4, 1, 4, 4)
    assert torch.equal(t, torch.full((4,), 0.1, dtype=torch.float64))
    assert (y_seen is None) if y is None else torch.equal(y_seen, y)
    with torch.no_grad():                      # u is the sampled u_{t_0} of that sample
        u_back, _ = model.transporter(x1.reshape(4, 16), t, y_seen)
    assert torch.allclose(u_back, u.reshape(4, 16), atol=1e-10)


@pytest.mark.parametrize("labelled,guidance", [(False, 0.0), (True, 0.0), (True, 2.0)])
def test_sampling_with_a_denoiser(labelled, guidance):
    model = small_ntm((1, 4, 4), steps=3, patch_size=2, num_classes=3, std=0.2)
    torch.manual_seed(1)
    den = perturb(Denoiser.for_teacher(model, hidden=16, blocks=1, context_dim=8).double(),
                  std=0.1, seed=1)
    y = torch.tensor([0, 1, 2, 0, 1]) if labelled else None
    kw = dict(y=y, guidance=guidance, t_min=0.1)
    x, X = model.sample(5, generator=gen(3), denoiser=den, return_trajectory=True, **kw)
    assert x.shape == (5, 1, 4, 4) and X.shape == (5, 4, 1, 4, 4) and torch.isfinite(X).all()
    assert torch.equal(model.sample(5, generator=gen(3), denoiser=den, **kw), x)
    assert not torch.equal(model.sample(5, generator=gen(4), denoiser=den, **kw), x)
    assert torch.equal(X[:, 0], x)                       # level 0 is the denoised sample
    plain, Xp = model.sample(5, generator=gen(3), return_trajectory=True, **kw)
    assert torch.equal(X[:, 1:], Xp[:, 1:])              # the noisier levels are the same
    spy = TransporterInverse(model)                      # ... and x = g(u_{t_0}, t_0, y)
    model.sample(5, generator=gen(3), denoiser=spy, **kw)
    with torch.no_grad():
        assert torch.equal(x, den(spy.calls[0][0], 0.1, y))
    assert (x - plain).abs().max() > 1e-3


def test_sampling_grid_t_min_and_its_errors():
    model = small_ntm((1, 4, 4), steps=4, patch_size=2, num_classes=0)   # t_1 = 0.25
    a = model.sample(3, generator=gen(0))
    assert torch.equal(model.sample(3, generator=gen(0), t_min=0.0), a)  # the default
    assert (model.sample(3, generator=gen(0), t_min=0.2) - a).abs().max() > 1e-3
    for bad in (-0.01, 0.25, 0.3, float("nan")):
        with pytest.raises(ValueError, match=r"t_min \(the t_0 of the sampling grid\) must lie "
                           r"in \[0, t_1 = 0.25\) for 4 steps"):
            model.sample(3, t_min=bad)
    assert model.sample(3, steps=2, t_min=0.3).shape == (3, 1, 4, 4)    # t_1 = 0.5 there
    with pytest.raises(ValueError, match=r"\[0, t_1 = 0.5\) for 2 steps"):
        model.sample(3, steps=2, t_min=0.5)


def test_sampling_refuses_a_denoiser_for_another_model():
    model = small_ntm((1, 4, 4), steps=3, patch_size=2, num_classes=3)
    with pytest.raises(ValueError, match="label mismatch: the denoiser has num_classes=0, this "
                       "NTM num_classes=3"):
        model.sample(2, t_min=0.1, denoiser=Denoiser((1, 4, 4), 0, hidden=8).double())
    with pytest.raises(ValueError, match=r"denoiser is for data of shape \[16\], this NTM for "
                       r"\[1, 4, 4\]"):
        model.sample(2, t_min=0.1, denoiser=Denoiser((16,), 3, hidden=8).double())
    with pytest.raises(ValueError, match=r"the denoiser returned shape \[2, 16\]"):
        model.sample(2, t_min=0.1, denoiser=lambda u, t, y: u.reshape(2, 16))


def test_sampling_with_a_denoiser_takes_its_t_d():
    """``NTM.sample(denoiser=...)`` starts the grid at the t_d the denoiser was distilled at;
    another t_min is refused; one without a recorded t_d needs t_min."""
    torch.manual_seed(0)
    model = NTM((1, 4, 4), steps=3, width=16, depth=1, heads=2, transporter_layers=1).eval()
    den = Denoiser((1, 4, 4), t_min=0.04).eval()
    g = lambda: torch.Generator().manual_seed(5)   # noqa: E731
    _, X = model.sample(3, denoiser=den, generator=g(), return_trajectory=True)
    _, X_at = model.sample(3, denoiser=den, t_min=0.04, generator=g(), return_trajectory=True)
    assert torch.equal(X, X_at)
    with pytest.raises(ValueError, match="distilled at t_d = 0.04"):
        model.sample(3, denoiser=den, t_min=0.0)
    with pytest.raises(ValueError, match="pass t_min="):
        model.sample(3, denoiser=Denoiser((1, 4, 4)))
    with pytest.raises(ValueError, match=r"t_min \(the t_d it is trained at\) must lie in"):
        Denoiser((1, 4, 4), t_min=0.0)
    # trajectory denoising starts at the model's t_min_max unless told otherwise
    a = model.sample(2, sampler="trajectory-denoise", generator=g())
    b = model.sample(2, sampler="trajectory-denoise", t_min=model.t_min_max, generator=g())
    assert torch.equal(a, b)
    assert not torch.equal(a, model.sample(2, sampler="trajectory-denoise", t_min=0.0,
                                           generator=g()))
