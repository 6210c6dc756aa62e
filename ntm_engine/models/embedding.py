"""Continuous time embeddings, the class embedding with a null class, and label handling."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["sinusoidal", "TimeEmbedding", "ClassEmbedding", "resolve_labels", "drop_labels"]


def sinusoidal(t: Tensor, features: int, max_freq: float = 1000.0) -> Tensor:
    """``[...] -> [..., features]``: ``sin``/``cos`` of ``t * f`` for ``features/2``
    frequencies ``f`` spaced geometrically in ``[1, max_freq]`` (t in [0, 1]); float32, or
    float64 for float64 times."""
    half = features // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), half,
                                     device=t.device, dtype=torch.float32))
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    args = t.to(dtype).unsqueeze(-1) * freqs.to(dtype)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class TimeEmbedding(nn.Module):
    """Times ``[...]`` (``n_times = 1``) or ``[..., n_times]`` -> ``[..., out_dim]``: sinusoidal
    features of each time, concatenated, then an MLP.  Continuous in the times, so any grid
    can be evaluated."""

    def __init__(self, out_dim: int, n_times: int = 1, features: int = 64,
                 hidden: Optional[int] = None):
        super().__init__()
        hidden = hidden or out_dim
        self.features, self.n_times = features, n_times
        self.mlp = nn.Sequential(nn.Linear(n_times * features, hidden), nn.SiLU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        if self.n_times == 1:
            t = t.unsqueeze(-1)
        feats = sinusoidal(t, self.features).flatten(-2)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class ClassEmbedding(nn.Module):
    """Labels ``0..num_classes-1`` plus the null label ``num_classes`` (unconditional).
    ``y = None`` means the null label for every row."""

    def __init__(self, num_classes: int, dim: int, std: float = 0.02):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=std)

    @property
    def null(self) -> int:
        return self.num_classes

    def forward(self, y: Optional[Tensor], rows: int) -> Tensor:
        if y is None:
            y = torch.full((rows,), self.null, dtype=torch.long, device=self.table.weight.device)
        return self.table(y)


def resolve_labels(y, batch: int, num_classes: int, device, owner: str = "NTM"
                   ) -> Optional[Tensor]:
    """Labels as a long tensor ``[batch]`` (an int is repeated; None stays None, the null
    label).  ``owner`` names the model in the errors."""
    if y is None:
        return None
    if num_classes == 0:
        raise ValueError(f"labels y given to an unconditional {owner} (num_classes=0)")
    if isinstance(y, int):
        return torch.full((batch,), y, dtype=torch.long, device=device)
    y = torch.as_tensor(y, device=device).long()
    if y.shape != (batch,):
        raise ValueError(f"labels y must have shape [{batch}], got {list(y.shape)}")
    return y


def drop_labels(y: Optional[Tensor], p: float, num_classes: int,
                generator: Optional[torch.Generator] = None) -> Optional[Tensor]:
    """Replace each label by the null label ``num_classes`` with probability ``p`` (one
    uniform draw per label from ``generator``; none when ``y`` is None or ``p = 0``)."""
    if y is None or p <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, num_classes), y)
