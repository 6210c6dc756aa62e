"""The trajectory losses of an NTM from its teacher-forced pass (docs/design.md section 1,
"Loss").

Inputs: ``x1 [B, D]`` (the last level, ``x_1``) and the outputs of
:meth:`NTM.predict_levels <ntm_engine.models.NTM.predict_levels>`: ``U, mu, log_sigma
[B, T, D]`` and ``logdet [B, T]``.  ``L = prior + sum_k factor_k`` with
``factor_k = -log N(u_{t_k}; mu_k, sig_k^2) - logdet_k`` and ``prior = -log N(x_1; 0, I)``.

* ``"end_to_end"``: ``L`` itself.
* ``"pairwise"``: ``prior + T * factor_k`` with one ``k ~ U{0..T-1}`` per sample, so its
  expectation over ``k`` is ``L``.  (The block-causal predictor still reads every noisier
  level, so the pass costs the same; the gradient flows through one factor per sample.)
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import ops

__all__ = ["TRAJECTORY_LOSSES", "prior_nll", "end_to_end_nll", "pairwise_nll",
           "trajectory_loss"]

TRAJECTORY_LOSSES = ("end_to_end", "pairwise")
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def prior_nll(x1: Tensor) -> Tensor:
    """``-log N(x_1; 0, I) [B]`` of ``x1 [B, D]``."""
    return 0.5 * x1.pow(2).sum(dim=1) + x1.shape[1] * HALF_LOG_2PI


def end_to_end_nll(x1: Tensor, U: Tensor, logdet: Tensor, mu: Tensor, log_sigma: Tensor
                   ) -> Tensor:
    """``L [B]``: all ``T`` factors and the prior."""
    B, T, D = U.shape
    nll = ops.gaussian_nll(U.reshape(B, T * D), mu.reshape(B, T * D),
                           log_sigma.reshape(B, T * D))
    return nll - logdet.sum(dim=1) + T * D * HALF_LOG_2PI + prior_nll(x1)


def pairwise_nll(x1: Tensor, U: Tensor, logdet: Tensor, mu: Tensor, log_sigma: Tensor,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """``prior + T * factor_k [B]``, ``k [B]`` uniform on ``0..T-1`` (one draw from
    ``generator``)."""
    B, T, D = U.shape
    k = torch.randint(T, (B, 1), generator=generator, device=U.device)
    rows = k.view(B, 1, 1).expand(B, 1, D)
    factor = ops.gaussian_nll(*(v.gather(1, rows).view(B, D) for v in (U, mu, log_sigma)))
    factor = factor - logdet.gather(1, k).view(B) + D * HALF_LOG_2PI
    return T * factor + prior_nll(x1)


def trajectory_loss(kind: str, x1: Tensor, levels: Tuple[Tensor, Tensor, Tensor, Tensor],
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """The loss ``[B]`` of ``kind`` (one of :data:`TRAJECTORY_LOSSES`) from ``x1`` and
    ``levels = (U, logdet, mu, log_sigma)``."""
    if kind == "end_to_end":
        return end_to_end_nll(x1, *levels)
    if kind == "pairwise":
        return pairwise_nll(x1, *levels, generator=generator)
    raise ValueError(f"trajectory_loss must be one of {TRAJECTORY_LOSSES}, got {kind!r}")
