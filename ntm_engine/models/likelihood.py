"""Bounds on ``log p(x)`` of an NTM from forward trajectories (docs/design.md section 1,
"Bound on the data").

With ``t_0 = 0`` (``x_{t_0} = x``) and forward trajectories ``X_i ~ q(. | x)``:

* one trajectory: ``log p(x) >= E_q[log p(X)] + H_q``, estimated by ``-L(X) + H_q`` with the
  analytic entropy ``H_q`` (:func:`~.schedule.forward_entropy`);
* ``K`` trajectories (importance weighting): ``log p(x) >= E[logsumexp_i w_i - log K]`` with
  ``w_i = log p(X_i) - log q(X_i | x)`` (:func:`~.schedule.forward_log_prob`).  It never lies
  above the one-trajectory bound in expectation, tightens as ``K`` grows, and is exact for
  any ``K`` when ``q`` is the model's own posterior (then every ``w_i = log p(x)``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import schedule

__all__ = ["log_likelihood_bound"]


def log_likelihood_bound(model, x: Tensor, y: Optional[Tensor] = None, *, samples: int = 1,
                         generator: Optional[torch.Generator] = None,
                         steps: Optional[int] = None) -> Tensor:
    """A bound ``[B]`` (nats) on ``log p(x)`` of data ``x [B, *data_shape]`` (labels ``y [B]``
    or None) with ``samples = K`` forward trajectories of ``steps`` (None: the model's
    default) steps from ``generator``, one after the other (module docstring)."""
    if samples < 1:
        raise ValueError(f"samples (the number K of forward trajectories) must be >= 1, "
                         f"got {samples}")
    log_w = []
    for _ in range(samples):
        X, t = model.forward_trajectory(x, generator, t_min=0.0, steps=steps)
        log_p = model.trajectory_log_prob(X, t, y)
        if samples == 1:
            return log_p + model.forward_entropy(t).to(log_p.dtype)
        log_q = schedule.forward_log_prob(X.reshape(*X.shape[:2], model.dim), t)
        log_w.append(log_p - log_q.to(log_p.dtype))
    return torch.logsumexp(torch.stack(log_w, dim=1), dim=1) - math.log(samples)
