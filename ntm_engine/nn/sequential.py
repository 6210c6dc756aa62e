"""A stack of invertible layers."""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor, nn


class InvertibleSequential(nn.Module):
    """Composes invertible layers; each has ``forward(x, context) -> (y, logdet)`` and
    ``inverse(y, context) -> (x, logdet)``.  Log-dets are summed per sample (``[B]``)."""

    def __init__(self, *layers: nn.Module, reversible: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.reversible = reversible

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        logdet = None
        for layer in self.layers:
            x, ld = layer(x, context)
            logdet = ld if logdet is None else logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        logdet = None
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z, context)
            logdet = ld if logdet is None else logdet + ld
        return z, logdet
