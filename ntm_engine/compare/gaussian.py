"""Gaussian data ``N(m, s^2 I)``, whose flow-matching velocity is known in closed form: the
check that a sampler's time and sign conventions agree with ours (``docs/design.md``
section 1: ``x_t = (1-t) x + t e``, ``v = E[e - x | x_t]``).

With ``a = 1 - t`` and ``V = a^2 s^2 + t^2`` (the variance of ``x_t``),
``E[x | x_t] = m + a s^2 (x_t - a m) / V`` and ``E[e | x_t] = t (x_t - a m) / V``, so
``v(x_t, t) = (t - a s^2) (x_t - a m) / V - m``; the ODE ``dx/dt = v`` carries ``N(0, I)``
at ``t = 1`` to ``N(m, s^2 I)`` at ``t = 0``.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor

__all__ = ["gaussian_velocity", "moment_errors"]


def gaussian_velocity(mean: float, std: float):
    """``v(x [B, ...], t [B], t_next [B]) -> [B, ...]``: the exact velocity of data
    ``N(mean, std^2 I)`` (``t_next`` unused)."""
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")

    def v(x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        t = t.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        a = 1 - t
        var = a * a * std * std + t * t
        return (t - a * std * std) * (x - a * mean) / var - mean
    return v


def moment_errors(samples: Tensor, mean: float, std: float) -> Dict[str, float]:
    """Errors of the sample mean and standard deviation of ``samples`` (all entries pooled,
    treated as independent draws) against ``N(mean, std^2)``, each also in units of its
    standard error (``std / sqrt(n)`` for the mean, ``std / sqrt(2 (n-1))`` for the std):
    ``{"mean_error", "std_error", "mean_z", "std_z", "n"}``."""
    s = samples.detach().double().flatten()
    n = s.numel()
    if n < 2:
        raise ValueError(f"samples must hold at least 2 values, got {n}")
    if not torch.isfinite(s).all():
        return {"mean_error": math.inf, "std_error": math.inf, "mean_z": math.inf,
                "std_z": math.inf, "n": n}
    dm = float(s.mean()) - mean
    ds = float(s.std()) - std
    return {"mean_error": dm, "std_error": ds, "mean_z": dm / (std / math.sqrt(n)),
            "std_z": ds / (std / math.sqrt(2 * (n - 1))), "n": n}
