"""Simple likelihood baselines, to read a model's bits/dim against.

:func:`histogram_bits_per_dim`: independent per-pixel histograms (one categorical over the
grey bins per dimension, optionally one set per class), fit on a training split.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["bin_indices", "histogram_bits_per_dim"]


def bin_indices(x: Tensor, bins: int, *, name: str = "x") -> Tensor:
    """Bin indices ``0..bins-1`` (long, shape of ``x``) of bin-centred data in [-1, 1]
    (value ``v`` at ``(v + 0.5) / bins * 2 - 1``); ValueError naming ``name`` if a value is
    not a bin centre."""
    idx = ((x.double() + 1) / 2 * bins - 0.5).round()
    centre = (idx + 0.5) / bins * 2 - 1
    if (idx < 0).any() or (idx >= bins).any() or (centre - x.double()).abs().max() > 1e-4:
        raise ValueError(f"{name} must hold bin centres (v + 0.5) / {bins} * 2 - 1 of "
                         f"{bins} bins in [-1, 1], got values in "
                         f"[{float(x.min()):.4g}, {float(x.max()):.4g}] off the centres")
    return idx.long()


def histogram_bits_per_dim(train_x: Tensor, test_x: Tensor, bins: int, *,
                           train_y: Optional[Tensor] = None, test_y: Optional[Tensor] = None,
                           alpha: float = 1.0) -> Tensor:
    """Per-sample bits/dim ``[N_test]`` of bin-centred ``test_x [N_test, ...]`` under
    independent per-dimension categoricals over ``bins`` bins fit on ``train_x [N, ...]``
    (counts plus ``alpha``, Laplace smoothing).  With ``train_y``/``test_y`` (both, long):
    one set of histograms per class, the test sample scored under its own class.  These are
    discrete bits, comparable with a dequantised model's bound
    (:meth:`NTM.bits_per_dim <ntm_engine.models.NTM.bits_per_dim>`)."""
    if (train_y is None) != (test_y is None):
        raise ValueError("train_y and test_y must be given together (a class-conditional "
                         f"baseline) or not at all, got train_y {type(train_y).__name__} and "
                         f"test_y {type(test_y).__name__}")
    if not alpha > 0:
        raise ValueError(f"alpha (the smoothing count) must be > 0, got {alpha}")
    tr = bin_indices(train_x, bins, name="train_x").flatten(1)
    te = bin_indices(test_x, bins, name="test_x").flatten(1)
    if tr.shape[1] != te.shape[1]:
        raise ValueError(f"train_x and test_x must have the same sample shape, got "
                         f"{list(train_x.shape[1:])} and {list(test_x.shape[1:])}")
    groups_tr = torch.zeros(len(tr), dtype=torch.long) if train_y is None else train_y.long()
    groups_te = torch.zeros(len(te), dtype=torch.long) if test_y is None else test_y.long()
    G, D = int(max(groups_tr.max(), groups_te.max())) + 1, tr.shape[1]
    counts = torch.full((G, D, bins), float(alpha), dtype=torch.float64)
    dims = torch.arange(D).expand_as(tr)
    counts.index_put_((groups_tr.unsqueeze(1).expand_as(tr), dims, tr),
                      torch.ones(tr.shape, dtype=torch.float64), accumulate=True)
    log_p = counts.log() - counts.sum(-1, keepdim=True).log()
    picked = log_p[groups_te.unsqueeze(1).expand_as(te), torch.arange(D).expand_as(te), te]
    return -picked.mean(dim=1) / math.log(2)
