"""The transporter ``f_T(x; t, y)``: a shallow stack of conditional affine couplings."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..nn import AffineCoupling, InvertibleSequential
from .embedding import ClassEmbedding, TimeEmbedding

__all__ = ["Transporter", "alternating_masks"]


def alternating_masks(data_shape: Sequence[int]) -> List[Tensor]:
    """The cycle of coupling masks (bool ``[D]``, True = kept) for flat data of ``data_shape``.

    Images ``[C, H, W]``: checkerboard, its complement, top half, bottom half.  Vectors
    ``[D]``: first half, second half, even, odd (only the halves for ``D < 4``).  Each mask is
    followed by its complement, so every feature is transformed in every pair of layers.
    """
    D = math.prod(data_shape)
    if len(data_shape) == 3:
        C, H, W = data_shape
        c, h, w = torch.meshgrid(torch.arange(C), torch.arange(H), torch.arange(W),
                                 indexing="ij")
        checker = ((c + h + w) % 2 == 0).flatten()
        half = (h < H // 2).flatten() if H > 1 else (w < W // 2).flatten()
        cands = [checker, half]
    else:
        idx = torch.arange(D)
        cands = [idx < D // 2]
        if D >= 4:
            cands.append(idx % 2 == 0)
    masks = []
    for m in cands:
        if m.any() and not m.all():
            masks += [m, ~m]
    return masks


class Transporter(nn.Module):
    """``u = f_T(x; t, y)`` on flat rows ``x [R, D]`` with per-row times ``t [R]`` and labels
    ``y [R]`` (or None).  Context = MLP(sinusoidal(t)) (+ class embedding).  A new transporter
    is the identity (zero-initialised conditioners).  With ``layers = 0`` or ``D < 2`` it is
    the identity (log-det 0).  The caller never applies it at ``t = 1``.
    """

    def __init__(self, data_shape: Sequence[int], layers: int = 4, hidden: int = 128,
                 num_classes: int = 0, clamp: Optional[float] = 2.0, context_dim: int = 64,
                 reversible: bool = True):
        super().__init__()
        self.dim = math.prod(data_shape)
        self.num_classes = num_classes
        self.identity = layers == 0 or self.dim < 2
        if self.identity:
            self.flow = None
            return
        self.time = TimeEmbedding(context_dim)
        self.label = ClassEmbedding(num_classes, context_dim) if num_classes > 0 else None
        masks = alternating_masks(data_shape)
        couplings = [AffineCoupling(self.dim, context_dim=context_dim, hidden=hidden, depth=2,
                                    mask=masks[i % len(masks)], clamp=clamp)
                     for i in range(layers)]
        self.flow = InvertibleSequential(*couplings, reversible=reversible)

    def context(self, t: Tensor, y: Optional[Tensor]) -> Tensor:
        """``[R, context_dim]`` from times ``t [R]`` and labels ``y [R]`` (None: null label)."""
        ctx = self.time(t)
        if self.label is not None:
            ctx = ctx + self.label(y, t.shape[0])
        return ctx

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x [R, D] -> (u [R, D], logdet [R])``."""
        if self.identity:
            return x, x.new_zeros(x.shape[0], dtype=_acc(x.dtype))
        return self.flow(x, self.context(t, y))

    def inverse(self, u: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``u [R, D] -> (x [R, D], logdet of the inverse [R])``."""
        if self.identity:
            return u, u.new_zeros(u.shape[0], dtype=_acc(u.dtype))
        return self.flow.inverse(u, self.context(t, y))


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
