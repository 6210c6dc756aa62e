"""Continuous time embeddings, the class embedding with a null class, and label and condition
handling (checking and dropout; the condition container is :mod:`ntm_engine.condition`)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..condition import Condition

__all__ = ["sinusoidal", "TimeEmbedding", "ClassEmbedding", "resolve_labels", "drop_labels",
           "resolve_condition", "drop_condition"]


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


def resolve_condition(y, batch: int, num_classes: int, cond_dim: int, device, *, cond=None,
                      cond_mask=None, owner: str = "NTM"):
    """A condition for ``batch`` rows, checked against a model with ``num_classes`` classes and
    condition tokens of ``cond_dim`` features: labels ``[batch]`` (long) or None when no tokens
    are given (what :func:`resolve_labels` gives), else a :class:`~ntm_engine.condition.
    Condition`.  ``y``: labels (an int, ``[batch]`` or None) or a ``Condition``; ``cond``:
    tokens ``[batch, L, C]`` or ``[L, C]`` (one sequence for every row), float, ``C =
    cond_dim``; ``cond_mask``: bool ``[batch, L]`` or ``[L]``, True = a real token (None: all
    real).  Tokens may come in ``y`` or as ``cond``, not both.  ``owner`` names the model in
    the errors."""
    if isinstance(y, Condition):
        if cond is not None or cond_mask is not None:
            raise ValueError("cond/cond_mask given besides a Condition y that holds the "
                             "condition; give the tokens one way")
        y, cond, cond_mask = y.labels, y.tokens, y.mask
    labels = resolve_labels(y, batch, num_classes, device, owner)
    if cond is None:
        if cond_mask is not None:
            raise ValueError("cond_mask given without cond (the condition tokens)")
        return labels
    if cond_dim == 0:
        raise ValueError(f"cond: condition tokens given to an {owner} without condition tokens "
                         f"(cond_dim=0)")
    cond = torch.as_tensor(cond, device=device)
    if not cond.dtype.is_floating_point:
        raise ValueError(f"cond: condition tokens must be a float tensor, got {cond.dtype}")
    if cond.dim() == 2:
        cond = cond.unsqueeze(0).expand(batch, *cond.shape)
    if cond.dim() != 3 or cond.shape[0] != batch or cond.shape[2] != cond_dim:
        raise ValueError(f"cond: condition tokens must have shape [{batch}, L, {cond_dim}] (or "
                         f"[L, {cond_dim}] for every row; cond_dim={cond_dim}), got "
                         f"{list(cond.shape)}")
    if cond_mask is not None:
        cond_mask = torch.as_tensor(cond_mask, device=device)
        if cond_mask.dtype != torch.bool:
            raise ValueError(f"cond_mask: expected a bool tensor (True = a real token), got "
                             f"{cond_mask.dtype}")
        if cond_mask.dim() == 1:
            cond_mask = cond_mask.unsqueeze(0).expand(batch, -1)
        if tuple(cond_mask.shape) != tuple(cond.shape[:2]):
            raise ValueError(f"cond_mask: expected shape {list(cond.shape[:2])} (the tokens' "
                             f"[B, L]) or [{cond.shape[1]}], got {list(cond_mask.shape)}")
    return Condition(labels, cond, cond_mask)


def drop_condition(y, p: float, num_classes: int,
                   generator: Optional[torch.Generator] = None):
    """Condition dropout: each row of a resolved condition ``y`` becomes unconditional with
    probability ``p`` (its label the null label ``num_classes``, its tokens all masked: the
    predictor then sees only its learned null sequence).  One uniform draw per row from
    ``generator`` for labels and tokens together; for plain labels exactly
    :func:`drop_labels` (the same draws)."""
    if not isinstance(y, Condition):
        return drop_labels(y, p, num_classes, generator)
    if p <= 0 or len(y) == 0:
        return y
    ref = y.labels if y.labels is not None else y.tokens
    drop = torch.rand(ref.shape[:1], generator=generator, device=ref.device) < p
    labels = None if y.labels is None else torch.where(
        drop, torch.full_like(y.labels, num_classes), y.labels)
    mask = None if y.tokens is None else y.full_mask() & ~drop.unsqueeze(1)
    return Condition(labels, y.tokens, mask)
