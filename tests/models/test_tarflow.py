"""The standalone TarFlow: exact likelihood, sampling by either decoder, bits/dim, errors."""
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from ntm_engine.models import TarFlow

from _ntm_testutils import perturb

SHAPE = (2, 4, 4)


def _flow(reversible=True):
    torch.manual_seed(0)
    flow = TarFlow(SHAPE, patch_size=2, blocks=3, width=16, depth=1, heads=2,
                   reversible=reversible)
    return perturb(flow.double(), std=0.3)


def _x(n=3, seed=0):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def test_log_prob_equals_brute_force():
    flow = _flow()
    x = _x(2)
    with torch.no_grad():
        lp = flow.log_prob(x)
    D = math.prod(SHAPE)
    for b in range(2):
        f = lambda v: flow(v.view(1, *SHAPE))[0].flatten()  # noqa: E731
        z = f(x[b].flatten())
        ld = torch.linalg.slogdet(jacobian(f, x[b].flatten())).logabsdet
        ref = ld - 0.5 * z.pow(2).sum() - 0.5 * D * math.log(2 * math.pi)
        assert abs(lp[b] - ref) <= 1e-10


def test_sample_with_either_decoder_and_round_trip():
    flow = _flow()
    a = flow.sample(4, generator=torch.Generator().manual_seed(1))
    b = flow.sample(4, generator=torch.Generator().manual_seed(1), method="jacobi", tol=0.0)
    assert a.shape == (4, *SHAPE) and (a - b).abs().max() <= 1e-12
    z = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        z_back, _ = flow(a)
    assert (z_back - z).abs().max() <= 1e-10
    _, _, reports = flow.inverse(z, method="jacobi", tol=0.0)
    assert len(reports) == 3 and all(r.converged for r in reports)


def test_bits_per_dim():
    flow = _flow()
    x = _x()
    with torch.no_grad():
        bpd = flow.bits_per_dim(x, bins=17)
        ref = -flow.log_prob(x) / (32 * math.log(2)) + math.log2(17 / 2)
        noisy, again = (flow.bits_per_dim(x, 17, dequantize=True,
                                          generator=torch.Generator().manual_seed(3))
                        for _ in range(2))
    assert torch.equal(bpd, ref) and torch.equal(noisy, again) and not torch.equal(noisy, bpd)


def test_reversible_training_step_equals_plain():
    grads = []
    for reversible in (True, False):
        flow = _flow(reversible)
        flow.bits_per_dim(_x(), 17).mean().backward()
        grads.append([p.grad for p in flow.parameters()])
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-8 * max(b.abs().max(), 1e-30)


def test_bad_input_names_the_argument():
    flow = _flow()
    with pytest.raises(ValueError, match=r"'x' must have shape \[B, 2, 4, 4\], got \[3, 1, 4, 4\]"):
        flow.log_prob(torch.zeros(3, 1, 4, 4, dtype=torch.float64))      # wrong channels
    with pytest.raises(ValueError, match="patch_size 3 must divide the image size 4x4"):
        TarFlow(SHAPE, patch_size=3)
    with pytest.raises(TypeError, match="'x' must have dtype torch.float64.*got torch.float32"):
        flow.log_prob(_x().float())
    with pytest.raises(ValueError, match="bins must be an int >= 2, got 1"):
        flow.bits_per_dim(_x(), 1)
