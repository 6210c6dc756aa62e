"""What a conditional model is conditioned on, row by row (docs/design.md section 1,
"Condition tokens").

A *condition* goes wherever class labels ``y`` go: ``None`` (unconditional), labels (an int or
``[B]`` long), or a :class:`Condition` holding labels ``[B]`` (or None) and condition tokens
``tokens [B, L, C]`` (float; e.g. a text encoder's last hidden states) with a padding mask
``mask [B, L]`` (bool, True = a real token; None: all real).  Data, batches, the training loss,
the likelihood and the sampler pass it along as they pass labels; only the predictor reads the
tokens, and only the (legacy label-conditioned) transporter and the denoiser read the labels
(:func:`labels_of`).

This module is the container and its row operations (indexing, device moves, the
unconditional counterpart of guidance, concatenation); checking user input against a model
is :func:`ntm_engine.models.embedding.resolve_condition`, condition dropout
:func:`ntm_engine.models.embedding.drop_condition`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["Condition", "labels_of", "tokens_of", "null_condition", "cat_conditions"]


@dataclass(frozen=True)
class Condition:
    """Labels ``[B]`` (long) or None, and/or condition tokens ``[B, L, C]`` with their padding
    mask ``[B, L]`` (bool, True = real; None: every token real).  Rows index like a tensor
    (``cond[idx]``, ``cond[a:b]``) and move with :meth:`to`."""

    labels: Optional[Tensor] = None
    tokens: Optional[Tensor] = None
    mask: Optional[Tensor] = None

    def __post_init__(self):
        if self.tokens is not None and self.tokens.dim() != 3:
            raise ValueError(f"Condition: tokens must be [B, L, C], got shape "
                             f"{list(self.tokens.shape)}")
        if self.mask is not None:
            if self.tokens is None:
                raise ValueError("Condition: a mask needs tokens")
            if self.mask.dtype != torch.bool or tuple(self.mask.shape) != \
                    tuple(self.tokens.shape[:2]):
                raise ValueError(f"Condition: mask must be bool [B, L] = "
                                 f"{list(self.tokens.shape[:2])}, got {self.mask.dtype} "
                                 f"{list(self.mask.shape)}")
        if self.labels is not None and self.tokens is not None and \
                self.labels.shape != self.tokens.shape[:1]:
            raise ValueError(f"Condition: labels must be [B] with B = {self.tokens.shape[0]} "
                             f"(the tokens' rows), got {list(self.labels.shape)}")

    def __len__(self) -> int:
        """The number of rows ``B`` (0 when the condition holds nothing)."""
        ref = self.labels if self.labels is not None else self.tokens
        return 0 if ref is None else int(ref.shape[0])

    def __getitem__(self, rows) -> "Condition":
        """Rows ``rows`` (a slice, an index tensor) of every part."""
        return Condition(*(None if v is None else v[rows]
                           for v in (self.labels, self.tokens, self.mask)))

    def to(self, device, **kw) -> "Condition":
        """Every part on ``device`` (``kw``: ``Tensor.to`` options, e.g. ``non_blocking``)."""
        return Condition(*(None if v is None else v.to(device, **kw)
                           for v in (self.labels, self.tokens, self.mask)))

    def full_mask(self) -> Optional[Tensor]:
        """The mask ``[B, L]``, all True when none was given (None without tokens)."""
        if self.tokens is None:
            return None
        if self.mask is not None:
            return self.mask
        return torch.ones(self.tokens.shape[:2], dtype=torch.bool, device=self.tokens.device)


Cond = Union[None, int, Tensor, Condition]


def labels_of(y: Cond):
    """The labels of a condition ``y``: ``y`` itself unless it is a :class:`Condition`."""
    return y.labels if isinstance(y, Condition) else y


def tokens_of(y: Cond) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """``(tokens [B, L, C], mask [B, L])`` of a condition (``(None, None)`` without tokens;
    the mask all True when none was given)."""
    if not isinstance(y, Condition) or y.tokens is None:
        return None, None
    return y.tokens, y.full_mask()


def null_condition(y: Cond, num_classes: int) -> Cond:
    """The unconditional counterpart of ``y`` (resolved: ``[B]`` labels or a
    :class:`Condition`), row for row, for guidance: labels become the null class
    ``num_classes``, tokens stay but are all masked (the predictor then sees only its learned
    null sequence, as for a dropped condition in training)."""
    if y is None:
        return None
    if not isinstance(y, Condition):
        return torch.full_like(y, num_classes)
    labels = None if y.labels is None else torch.full_like(y.labels, num_classes)
    mask = None if y.tokens is None else torch.zeros(y.tokens.shape[:2], dtype=torch.bool,
                                                     device=y.tokens.device)
    return Condition(labels, y.tokens, mask)


def cat_conditions(a: Cond, b: Cond) -> Cond:
    """Rows of ``a`` then of ``b`` (two resolved conditions of the same kind, e.g. a condition
    and its :func:`null_condition`)."""
    if a is None and b is None:
        return None
    if not isinstance(a, Condition) and not isinstance(b, Condition):
        return torch.cat([a, b])
    if not (isinstance(a, Condition) and isinstance(b, Condition)) or \
            (a.labels is None) != (b.labels is None) or (a.tokens is None) != (b.tokens is None):
        raise ValueError("cat_conditions: both conditions must hold the same parts")
    labels = None if a.labels is None else torch.cat([a.labels, b.labels])
    if a.tokens is None:
        return Condition(labels)
    return Condition(labels, torch.cat([a.tokens, b.tokens]),
                     torch.cat([a.full_mask(), b.full_mask()]))
