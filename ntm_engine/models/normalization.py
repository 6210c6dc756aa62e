"""The fixed per-channel normalisation of a model's data (latents of an autoencoder): the
model's own space is ``x_model = (x - mean_c) / scale_c`` for channel ``c`` (the first axis
of ``data_shape``: the channels of ``[C, H, W]``, the coordinates of ``[D]``).

It is the first bijection of the model, with no parameters to learn: training, the forward
trajectories and the likelihood see ``x_model``; samples are returned as ``x``.  Its
log-Jacobian ``log |det d x_model / d x| = -(D / C) * sum_c log scale_c`` makes the model's
density one of ``x`` (docs/design.md section 1, "Latent data").  ``mean = scale = None`` is
the identity (every image and toy model).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["ChannelNorm"]


def _values(name: str, v, channels: int) -> Optional[Tuple[float, ...]]:
    if v is None:
        return None
    try:
        vals = tuple(float(a) for a in v)
    except TypeError:
        raise ValueError(f"{name} must be a list of {channels} numbers (one per channel) or "
                         f"None, got {v!r}") from None
    if len(vals) != channels or not all(math.isfinite(a) for a in vals):
        raise ValueError(f"{name} must be {channels} finite numbers (one per channel of the "
                         f"data), got {list(v)}")
    return vals


class ChannelNorm:
    """``x -> (x - mean_c) / scale_c`` over data ``[B, *data_shape]`` (module docstring);
    ``mean``/``scale``: one number per channel, or both None (the identity)."""

    def __init__(self, data_shape: Sequence[int], mean: Optional[Sequence[float]] = None,
                 scale: Optional[Sequence[float]] = None):
        self.data_shape = tuple(int(s) for s in data_shape)
        channels = self.data_shape[0]
        self.mean = _values("channel_mean", mean, channels)
        self.scale = _values("channel_scale", scale, channels)
        if (self.mean is None) != (self.scale is None):
            raise ValueError(f"channel_mean and channel_scale go together (both lists of "
                             f"{channels} numbers, or both None), got {mean!r} and {scale!r}")
        if self.scale is not None and not all(s > 0 for s in self.scale):
            raise ValueError(f"channel_scale must be > 0 for every channel, got "
                             f"{list(self.scale)}")

    @property
    def identity(self) -> bool:
        return self.mean is None

    def _view(self, values: Tuple[float, ...], like: Tensor) -> Tensor:
        shape = (len(values),) + (1,) * (len(self.data_shape) - 1)
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(shape)

    def to_model(self, x: Tensor) -> Tensor:
        """Data ``x [B, *data_shape]`` -> the model's space (the same tensor if identity)."""
        if self.identity:
            return x
        return (x - self._view(self.mean, x)) / self._view(self.scale, x)

    def to_data(self, x: Tensor) -> Tensor:
        """The model's space ``[B, *data_shape]`` -> data (the inverse of :meth:`to_model`)."""
        if self.identity:
            return x
        return x * self._view(self.scale, x) + self._view(self.mean, x)

    def log_det(self) -> float:
        """``log |det d to_model(x) / d x|`` per sample (nats): ``-(D / C) sum_c log
        scale_c``; 0 for the identity.  ``log p(x) = log p_model(to_model(x)) + log_det``."""
        if self.identity:
            return 0.0
        per_channel = math.prod(self.data_shape) // self.data_shape[0]
        return -per_channel * math.fsum(math.log(s) for s in self.scale)
