"""Conditional affine coupling on flat features ``[B, dim]``."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops
from .base import InvertibleModule, ReverseStepResult, grads_for

__all__ = ["AffineCoupling"]


class AffineCoupling(InvertibleModule):
    """Affine coupling ``y_b = x_b * exp(s) + t``, ``(t, s_logits) = net(x_a, context)``.

    ``x`` is ``[B, dim]``; the kept part ``x_a`` passes unchanged.  ``mask`` (bool ``[dim]``,
    True = kept) chooses the split; default: the first ``dim // 2`` features are kept.  The
    conditioner is an MLP (``depth`` hidden layers of width ``hidden``, SiLU, optional dropout)
    whose last layer is zero-initialised, so a new layer is the identity.  ``context``
    (``[B, context_dim]``) is concatenated to the conditioner input.  ``s`` is soft-clamped:
    ``s = clamp * tanh(s_logits / clamp)`` (``clamp=None``: no clamp).  The fused
    ``ntm.affine_coupling`` op does the transform and its log-det, and the fused
    ``ntm.affine_coupling_backward`` op the activation-free backward (:meth:`reverse_step`).
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
        # A mask that keeps a prefix (or a suffix) splits by slicing (views), not gathering.
        self._prefix = n_kept if bool(mask[:n_kept].all()) else None
        self._suffix = n_moved if self._prefix is None and bool(mask[n_moved:].all()) else None
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

    # ------------------------------------------------------------------ pieces

    def conditioner(self, kept: Tensor, context: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """``(shift, scale_logits)``, each ``[B, n_moved]`` in ``kept.dtype`` (also under
        autocast), from the kept part ``[B, n_kept]`` and the context ``[B, context_dim]``
        (or None)."""
        return self._net_out(kept, context).to(kept.dtype).chunk(2, dim=1)

    def _net_out(self, kept: Tensor, context: Optional[Tensor]) -> Tensor:
        if context is None:
            if self.context_dim:
                raise ValueError(f"AffineCoupling: expected a context [B, {self.context_dim}], "
                                 "got None")
            h = kept
        else:
            if context.dim() != 2 or context.shape != (kept.shape[0], self.context_dim):
                raise ValueError(f"AffineCoupling: context must be [B={kept.shape[0]}, "
                                 f"{self.context_dim}], got {list(context.shape)}")
            h = torch.cat([kept, context.to(kept.dtype)], dim=1)
        return self.net(h)

    def split(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``[B, dim] -> (kept [B, n_kept], moved [B, n_moved])`` (views when possible)."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"AffineCoupling: expected x of shape [B, {self.dim}], "
                             f"got {list(x.shape)}")
        if self._prefix is not None:
            return x[:, :self._prefix], x[:, self._prefix:]
        if self._suffix is not None:
            return x[:, self._suffix:], x[:, :self._suffix]
        return x.index_select(1, self.kept_index), x.index_select(1, self.moved_index)

    def merge(self, kept: Tensor, moved: Tensor) -> Tensor:
        """Inverse of :meth:`split`: a new ``[B, dim]`` tensor."""
        if self._prefix is not None:
            return torch.cat([kept, moved], dim=1)
        if self._suffix is not None:
            return torch.cat([moved, kept], dim=1)
        out = kept.new_empty(kept.shape[0], self.dim)
        out.index_copy_(1, self.kept_index, kept)
        out.index_copy_(1, self.moved_index, moved)
        return out

    # ------------------------------------------------------------------ directions

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Data to latent: ``x [B, dim] -> (y [B, dim], logdet [B])``."""
        kept, moved = self.split(x)
        shift, logits = self.conditioner(kept, context)
        moved, logdet = ops.affine_coupling(moved, shift, logits, self.clamp)
        return self.merge(kept, moved), logdet

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Latent to data: ``y [B, dim] -> (x [B, dim], logdet of the inverse [B])``."""
        kept, moved = self.split(y)
        shift, logits = self.conditioner(kept, context)
        moved, logdet = ops.affine_coupling_inverse(moved, shift, logits, self.clamp)
        return self.merge(kept, moved), logdet

    def reverse_step(self, y: Tensor, grad_y: Tensor, grad_logdet: Optional[Tensor] = None,
                     context: Optional[Tensor] = None) -> ReverseStepResult:
        """Activation-free backward step, from the output ``y [B, dim]``.

        Re-runs the conditioner once (under ``torch.enable_grad``) on the kept half, which
        ``y`` carries unchanged; the fused ``affine_coupling_backward`` rebuilds the moved half
        of ``x`` and gives ``grad_x``/``grad_shift``/``grad_scale_logits`` in one pass; one
        ``torch.autograd.grad`` through the conditioner gives the kept half's, the context's
        and the parameters' gradients.  Returns ``(x, grad_x, grad_context, param_grads)``.
        """
        y_kept, y_moved = self.split(y)
        g_kept, g_moved = self.split(grad_y)
        params = tuple(self.parameters())
        with torch.enable_grad():
            kept_in = y_kept.detach().requires_grad_()
            out = self._net_out(kept_in, context)
        shift, logits = out.detach().to(y.dtype).chunk(2, dim=1)
        x_moved, gx_moved, g_shift, g_logits = ops.affine_coupling_backward(
            y_moved, shift, logits, g_moved, grad_logdet, self.clamp)
        del shift, logits
        g_out = torch.cat([g_shift, g_logits], dim=1).to(out.dtype)
        del g_shift, g_logits  # (the dels keep the transient memory of a step small)
        g_kept_net, grad_ctx, param_grads = grads_for([out], [g_out], kept_in, context, params)
        del out, g_out
        gx_kept = g_kept if g_kept_net is None else g_kept + g_kept_net
        del g_kept_net
        grad_x = self.merge(gx_kept, gx_moved)
        del gx_kept, gx_moved
        return self.merge(y_kept, x_moved), grad_x, grad_ctx, param_grads

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, context_dim={self.context_dim}, "
                f"kept={len(self.kept_index)}, clamp={self.clamp}")
