"""Classifier-free guidance of Gaussian reverse steps (docs/design.md section 1, "Guidance")."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["guide"]


def guide(mu_c: Tensor, log_sigma_c: Tensor, mu_u: Tensor, log_sigma_u: Tensor, weight: float
          ) -> Tuple[Tensor, Tensor]:
    """Guided ``(mu, log_sigma)`` from conditional and unconditional Gaussians, weight ``w``:
    ``r = clip((sig_c/sig_u)^2, 0, 1)``, ``sig = sig_c / sqrt(1 + w - w r)``,
    ``mu = ((1+w) mu_c - w r mu_u) / (1 + w - w r)``.  ``w = 0`` returns the conditional."""
    if weight == 0:
        return mu_c, log_sigma_c
    w = float(weight)
    r = torch.exp(2 * (log_sigma_c - log_sigma_u)).clamp(0, 1)
    denom = 1 + w - w * r
    mu = ((1 + w) * mu_c - w * r * mu_u) / denom
    return mu, log_sigma_c - 0.5 * torch.log(denom)
