"""Exact likelihood as a product: one bits/dim per image (nats/dim per latent), in the data's
order (``ntm score``), and how well it tells two sets of images apart (AUROC).

The score of an image is the importance-weighted bound of :meth:`NTM.log_prob
<ntm_engine.models.NTM.log_prob>` over ``samples`` forward trajectories (``t_0 = 0``), in
bits/dim of data with the model's ``bins`` (the image dequantised with uniform noise inside
its bin, drawn afresh with each trajectory from ``seed``, or once for ``samples = 1``): lower is
more likely under the model.  A class-conditional model scores ``p(x)`` (its unconditional
branch, the null class) unless labels are given, then ``p(x | y)``.  Latents are scored in
nats/dim, never dequantised (:func:`latent_nats_per_dim`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..metrics import bits_per_dim_of, per_sample_values

__all__ = ["image_bits_per_dim", "latent_nats_per_dim", "auroc"]


def image_bits_per_dim(model: nn.Module, x: Tensor, y: Optional[Tensor] = None, *,
                       bins: int, samples: int = 16, batch_size: int = 256, seed: int = 0,
                       steps: Optional[int] = None, dequantize_data: bool = True,
                       device=None) -> Tensor:
    """Bits/dim ``[N]`` (float64, CPU) of images ``x [N, *data_shape]`` in [-1, 1] (labels
    ``y [N]`` or None), importance-weighted over ``samples`` trajectories (module docstring)."""
    per_sample, dequantize_first = bits_per_dim_of(model, bins, samples, dequantize_data)
    return _per_image(lambda xb, yb, g: per_sample(xb, yb, g, samples=samples, steps=steps),
                      model, x, y, bins, samples, batch_size, seed, dequantize_first, device)


def latent_nats_per_dim(model: nn.Module, z: Tensor, y: Optional[Tensor] = None, *,
                        samples: int = 16, batch_size: int = 256, seed: int = 0,
                        steps: Optional[int] = None, device=None) -> Tensor:
    """Nats/dim ``[N]`` (float64, CPU) of latents ``z [N, *data_shape]`` in their own scale
    (labels ``y [N]`` or None), importance-weighted over ``samples`` trajectories, without
    dequantisation (:meth:`NTM.nats_per_dim <ntm_engine.models.NTM.nats_per_dim>`)."""
    return _per_image(lambda xb, yb, g: model.nats_per_dim(xb, yb, generator=g,
                                                           samples=samples, steps=steps),
                      model, z, y, 0, samples, batch_size, seed, False, device)


def _per_image(per_sample, model, x, y, bins, samples, batch_size, seed, dequantize_data,
               device) -> Tensor:
    if samples < 1:
        raise ValueError(f"samples (trajectories per image) must be >= 1, got {samples}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        return per_sample_values(per_sample, x, y, bins, batch_size, seed, dequantize_data,
                                 device)
    finally:
        model.train(was)


def auroc(inliers: Sequence[float], outliers: Sequence[float]) -> float:
    """The area under the ROC curve of telling ``outliers`` from ``inliers`` by their score
    (higher = more anomalous): the probability that a random outlier scores above a random
    inlier (ties count half).  1.0: perfectly separated; 0.5: chance."""
    from sklearn.metrics import roc_auc_score

    a = torch.as_tensor(inliers, dtype=torch.float64).reshape(-1)
    b = torch.as_tensor(outliers, dtype=torch.float64).reshape(-1)
    if not len(a) or not len(b):
        raise ValueError(f"auroc needs both sets non-empty, got {len(a)} inliers and "
                         f"{len(b)} outliers")
    truth = torch.cat([torch.zeros(len(a)), torch.ones(len(b))]).numpy()
    return float(roc_auc_score(truth, torch.cat([a, b]).numpy()))
