"""Fixed feature permutation on ``[B, dim]`` (volume preserving: logdet 0)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .base import InvertibleModule, ReverseStepResult, accumulation_dtype

__all__ = ["Permutation"]


class Permutation(InvertibleModule):
    """``y = x[:, perm]`` (forward, data to latent), ``x = y[:, inverse_perm]`` (inverse).

    ``mode="reverse"``: ``perm = [dim-1, ..., 0]``; ``mode="random"``: a fixed random
    permutation drawn at construction from ``generator``, else from ``torch.Generator`` seeded
    with ``seed``, else from the global RNG (like ``nn.Linear``'s initialisation).  The
    permutation is a persistent buffer (it is saved in the state dict).  Log-dets are zeros
    ``[B]`` in the accumulation dtype.  No parameters; ignores the context.
    """

    def __init__(self, dim: int, mode: str = "random", seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if dim < 1:
            raise ValueError(f"Permutation: dim must be >= 1, got {dim}")
        if mode == "reverse":
            perm = torch.arange(dim - 1, -1, -1)
        elif mode == "random":
            if generator is None and seed is not None:
                generator = torch.Generator().manual_seed(seed)
            perm = torch.randperm(dim, generator=generator)
        else:
            raise ValueError(f"Permutation: mode must be 'random' or 'reverse', got {mode!r}")
        self.dim, self.mode = dim, mode
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"Permutation: expected a tensor of shape [B, {self.dim}], "
                             f"got {list(x.shape)}")

    def _zeros(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], dtype=accumulation_dtype(x.dtype), device=x.device)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Data to latent: ``x [B, dim] -> (x[:, perm], zeros [B])``."""
        self._check(x)
        return x.index_select(1, self.perm), self._zeros(x)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Latent to data: ``y [B, dim] -> (y[:, inverse_perm], zeros [B])``."""
        self._check(y)
        return y.index_select(1, self.inverse_perm), self._zeros(y)

    def reverse_step(self, y: Tensor, grad_y: Tensor, grad_logdet: Optional[Tensor] = None,
                     context: Optional[Tensor] = None) -> ReverseStepResult:
        """``(x, grad_x, None, ())``: both rebuilt by the inverse permutation."""
        self._check(y)
        return (y.index_select(1, self.inverse_perm), grad_y.index_select(1, self.inverse_perm),
                None, ())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mode={self.mode!r}"
