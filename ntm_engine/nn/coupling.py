"""Conditional affine coupling on flat features ``[B, dim]``."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops


class AffineCoupling(nn.Module):
    """Affine coupling ``y_b = x_b * exp(s) + t``, ``(t, s_logits) = net(x_a, context)``.

    ``x`` is ``[B, dim]``; the kept part ``x_a`` passes unchanged.  ``mask`` (bool ``[dim]``,
    True = kept) chooses the split; default: the first ``dim // 2`` features are kept.  The
    conditioner is an MLP whose last layer is zero-initialised, so a new layer is the identity.
    ``context`` (``[B, context_dim]``) is concatenated to the conditioner input.
    The fused ``ntm.affine_coupling`` op does the transform and its log-det.
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden: int = 256, depth: int = 2,
                 mask: Optional[Tensor] = None, clamp: Optional[float] = 2.0,
                 dropout: float = 0.0):
        super().__init__()
        if dim < 2:
            raise ValueError(f"AffineCoupling: dim must be >= 2, got {dim}")
        if mask is None:
            mask = torch.arange(dim) < dim // 2
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != (dim,) or mask.all() or not mask.any():
            raise ValueError("AffineCoupling: mask must be a bool tensor of shape [dim] "
                             "with both kept and transformed features")
        self.dim, self.context_dim, self.clamp = dim, context_dim, clamp
        self.register_buffer("kept_index", mask.nonzero().flatten(), persistent=False)
        self.register_buffer("moved_index", (~mask).nonzero().flatten(), persistent=False)
        n_kept, n_moved = len(self.kept_index), len(self.moved_index)
        layers, width = [], n_kept + context_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        last = nn.Linear(width, 2 * n_moved)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def conditioner(self, kept: Tensor, context: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """``(shift, scale_logits)``, each ``[B, n_moved]``, from the kept part and context."""
        h = kept if context is None else torch.cat([kept, context.to(kept.dtype)], dim=1)
        shift, logits = self.net(h).chunk(2, dim=1)
        return shift, logits

    def split(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return x.index_select(1, self.kept_index), x.index_select(1, self.moved_index)

    def merge(self, kept: Tensor, moved: Tensor) -> Tensor:
        out = kept.new_empty(kept.shape[0], self.dim)
        out[:, self.kept_index] = kept
        out[:, self.moved_index] = moved
        return out

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``[B, dim] -> (y [B, dim], logdet [B])``."""
        kept, moved = self.split(x)
        shift, logits = self.conditioner(kept, context)
        moved, logdet = ops.affine_coupling(moved, shift, logits, self.clamp)
        return self.merge(kept, moved), logdet

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``[B, dim] -> (x [B, dim], logdet of the inverse [B])``."""
        kept, moved = self.split(y)
        shift, logits = self.conditioner(kept, context)
        moved, logdet = ops.affine_coupling_inverse(moved, shift, logits, self.clamp)
        return self.merge(kept, moved), logdet
