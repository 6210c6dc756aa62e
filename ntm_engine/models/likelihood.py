"""Where the NTM's likelihood lives (docs/design.md section 1, "Likelihood", "Bits/dim",
"Trajectory denoising"): the exact log-density of a trajectory, bounds on ``log p(x)`` of the
data, bits/dim, and the trajectory score with the Tweedie posterior mean built on it.

With ``t_0 = 0`` (``x_{t_0} = x``) and forward trajectories ``X_i ~ q(. | x)``:

* one trajectory: ``log p(x) >= E_q[log p(X)] + H_q``, estimated by ``-L(X) + H_q`` with the
  analytic entropy ``H_q`` (:func:`~.schedule.forward_entropy`);
* ``K`` trajectories (importance weighting): ``log p(x) >= E[logsumexp_i w_i - log K]`` with
  ``w_i = log p(X_i) - log q(X_i | x)`` (:func:`~.schedule.forward_log_prob`).  It never lies
  above the one-trajectory bound in expectation, tightens as ``K`` grows, and is exact for
  any ``K`` when ``q`` is the model's own posterior (then every ``w_i = log p(x)``).

Bits/dim of discrete data (bins of width ``w``) bound ``log P(bin of x) = log w^D + log
E_{u ~ U(bin)} p(x + u)``: with the dequantisation noise ``u`` fixed per data point, every bound
above is one on ``log p(x + u)``, below ``log P(bin) - D log w`` by Jensen whatever ``K``; with
``u_i`` drawn afresh for each trajectory (``(u_i, X_i)`` importance-sampled together,
:func:`bits_per_dim` with ``dequantize=True``) the ``K``-sample bound tends to ``log P(bin)``.

Trajectories live in the model's space; a model with a channel normalisation
(:class:`~.normalization.ChannelNorm`, latent data) adds its log-Jacobian to the bounds, so
they bound the density of the data ``x`` in its own scale (:func:`nats_per_dim`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from . import schedule
from .loss import end_to_end_nll

if TYPE_CHECKING:   # the NTM imports this module
    from .ntm import NTM

__all__ = ["trajectory_log_prob", "log_likelihood_bound", "bits_per_dim", "nats_per_dim",
           "uniform_dequantize", "trajectory_score", "posterior_mean"]


def trajectory_log_prob(model: "NTM", X: Tensor, t: Tensor, y=None) -> Tensor:
    """Exact ``log p(X) [B]`` (nats) of a trajectory ``X [B, T+1, *data_shape]`` (the model's
    space) on the grid ``t [B, T+1]`` with the condition ``y`` (labels or a
    :class:`~ntm_engine.condition.Condition`): ``-L`` with ``L`` the end-to-end trajectory NLL
    of one teacher-forced pass (no condition dropout)."""
    levels = model.predict_levels(X, t, y)
    return -end_to_end_nll(model.last_level(X), *levels)


def log_likelihood_bound(model: "NTM", x: Tensor, y: Optional[Tensor] = None, *,
                         samples: int = 1, generator: Optional[torch.Generator] = None,
                         steps: Optional[int] = None,
                         dequantize_width: Optional[float] = None) -> Tensor:
    """A bound ``[B]`` (nats) on ``log p(x)`` of data ``x [B, *data_shape]`` (labels ``y [B]``
    or None) with ``samples = K`` forward trajectories of ``steps`` (None: the model's
    default) steps from ``generator``, one after the other (module docstring); with the
    log-Jacobian of the model's channel normalisation, if any.

    ``dequantize_width`` ``w`` (discrete data ``x``, bins of width ``w``): each trajectory
    starts from its own ``x + w (U - 1/2)``, ``U ~ U[0, 1)^D`` drawn just before it, so the
    noise is importance-sampled with the trajectory and the bound is one on
    ``log(P(bin of x) / w^D)``, exact as ``K`` grows (module docstring, "Bits/dim")."""
    if samples < 1:
        raise ValueError(f"samples (the number K of forward trajectories) must be >= 1, "
                         f"got {samples}")
    log_w = []
    for _ in range(samples):
        x_k = x if dequantize_width is None else uniform_dequantize(x, dequantize_width,
                                                                     generator)
        X, t = model.forward_trajectory(x_k, generator, t_min=0.0, steps=steps)
        log_p = model.trajectory_log_prob(X, t, y)
        if samples == 1:
            return _in_data_space(model, log_p + model.forward_entropy(t).to(log_p.dtype))
        log_q = schedule.forward_log_prob(X.reshape(*X.shape[:2], model.dim), t)
        log_w.append(log_p - log_q.to(log_p.dtype))
    return _in_data_space(model, torch.logsumexp(torch.stack(log_w, dim=1), dim=1)
                          - math.log(samples))


def _in_data_space(model: "NTM", log_px: Tensor) -> Tensor:
    """A log-density of the model's space made one of the data: plus the log-Jacobian of
    the channel normalisation (nothing for a model without one)."""
    return log_px if model.norm.identity else log_px + model.norm.log_det()


def nats_per_dim(model: "NTM", x: Tensor, y=None, generator: Optional[torch.Generator] = None,
                 *, samples: int = 1, steps: Optional[int] = None) -> Tensor:
    """Per-sample bound ``[B]`` on ``-log p(x) / D`` (nats per dimension) of continuous data
    ``x`` (latents; no bins, no dequantisation), with ``t_0 = 0``:
    :func:`log_likelihood_bound` over ``samples = K`` forward trajectories on the grid of
    ``steps``, the channel normalisation's log-Jacobian included (the density of ``x`` in
    its own scale).  No label dropout."""
    log_px = log_likelihood_bound(model, x, model.resolve_labels(y, x.shape[0], x.device),
                                  samples=samples, generator=generator, steps=steps)
    return -log_px / model.dim


def bits_per_dim(model: "NTM", x: Tensor, y=None, bins: int = 256,
                 generator: Optional[torch.Generator] = None, *, dequantize: bool = False,
                 samples: int = 1, steps: Optional[int] = None) -> Tensor:
    """Per-sample bound ``[B]`` on bits/dim of discrete data with ``bins`` bins on [-1, 1]
    (digits: 17; 8-bit: 256), with ``t_0 = 0`` on the grid of ``steps`` (None: the model's
    default): :func:`log_likelihood_bound` over ``samples = K`` forward trajectories
    (``K = 1``: ``(L - H_q) / (D ln 2)``; ``K > 1``: importance-weighted, tighter), in
    bits/dim, plus ``log2(bins / 2)``.  The mean over data bounds the bits/dim of the
    dequantised model.  ``x`` must already be uniformly dequantised
    (:func:`ntm_engine.data.dequantize`), unless ``dequantize=True``: then ``x`` holds bin
    centres and each trajectory starts from its own noise (from ``generator``, drawn just
    before it; ``K = 1``: the same bound as dequantising first), so for ``K > 1`` the noise is
    importance-sampled too and the bound tends to the discrete bits/dim (module docstring).
    No label dropout."""
    log_px = log_likelihood_bound(model, x, model.resolve_condition(y, x.shape[0], x.device),
                                  samples=samples, generator=generator, steps=steps,
                                  dequantize_width=2.0 / bins if dequantize else None)
    return -log_px / (model.dim * math.log(2)) + math.log2(bins / 2)


def uniform_dequantize(x: Tensor, width: float, generator: Optional[torch.Generator]) -> Tensor:
    """``x + width (U - 1/2)`` with ``U ~ U[0, 1)`` of ``x``'s shape from ``generator``: a point
    drawn uniformly in the bin of width ``width`` centred on each value of ``x``."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (noise - 0.5) * width


def trajectory_score(model: "NTM", X: Tensor, t: Tensor, y=None) -> Tensor:
    """``grad_X log p(X)`` ``[B, T+1, *data_shape]`` (exact, by autograd through ``L``)."""
    with torch.enable_grad():
        Xg = X.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(trajectory_log_prob(model, Xg, t, y).sum(), Xg)
    return g


def posterior_mean(model: "NTM", X: Tensor, t: Tensor, y=None) -> Tensor:
    """Tweedie estimate ``E[x | X] [B, *data_shape]`` of the clean data from a trajectory:
    ``(X_0 + [S grad_X log p(X)]_0) / (1 - t_0)`` with ``S`` the level covariance of
    :func:`~.schedule.level_covariance` over levels ``t_0..t_{T-1}``.  (With ``t_0 = 0`` it is
    ``X_0``; it is informative for ``t_0 > 0``.)"""
    B, T = X.shape[0], X.shape[1] - 1
    score = trajectory_score(model, X, t, y).reshape(B, T + 1, model.dim)[:, :T]
    S = schedule.level_covariance(t.to(X.dtype))                 # [B, T, T]
    corr = torch.einsum("bj,bjd->bd", S[:, 0], score)
    x0 = X.reshape(B, T + 1, model.dim)[:, 0]
    return ((x0 + corr) / (1 - t[:, :1].to(X.dtype))).view(B, *model.data_shape)
