"""The light denoiser ``g(u_{t_0}, t_0, y)`` distilled from an NTM (docs/design.md section 1,
"Trajectory denoising and self-distillation").

It reads the transporter's output at the cleanest level, ``u_{t_0} = f_T(x_{t_0}; t_0, y)``,
and estimates the clean data ``E[x | X]``; at sampling time it replaces the transporter
inverse (:meth:`~ntm_engine.models.NTM.sample` with ``denoiser=``).  Training:
:mod:`ntm_engine.training.distiller`.

``x = u + head(h)`` with ``h`` a small residual network over ``u`` whose blocks are modulated
(shift, scale) by a context vector ``c = MLP(sinusoidal(t_0)) (+ class embedding)``.  The head
is zero-initialised, so a new denoiser is the identity ``x = u``.  Two bodies:

* ``"mlp"`` -- a residual MLP over the flat data ``[B, D]`` (any data shape; the default);
* ``"conv"`` -- 3x3 convolutions over images ``[B, C, H, W]``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embedding import ClassEmbedding, TimeEmbedding, resolve_labels
from .pretrained import PretrainedMixin

__all__ = ["Denoiser"]

ARCHS = ("mlp", "conv")


class _ModulatedBlock(nn.Module):
    """``h + W2 silu(W1 (norm(h) (1 + scale) + shift))``; ``(shift, scale)`` are linear in the
    context ``c [B, context_dim]``.  ``W1, W2``: linear maps over ``h [B, hidden]``, or 3x3
    convolutions over ``h [B, hidden, H, W]``."""

    def __init__(self, hidden: int, context_dim: int, conv: bool):
        super().__init__()
        self.conv = conv
        if conv:
            self.norm = nn.GroupNorm(1, hidden, affine=False)
            self.fc1 = nn.Conv2d(hidden, hidden, 3, padding=1)
            self.fc2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        else:
            self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
            self.fc1 = nn.Linear(hidden, hidden)
            self.fc2 = nn.Linear(hidden, hidden)
        self.mod = nn.Linear(context_dim, 2 * hidden)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.mod(c).chunk(2, dim=-1)
        if self.conv:
            shift, scale = shift[..., None, None], scale[..., None, None]
        return h + self.fc2(F.silu(self.fc1(self.norm(h) * (1 + scale) + shift)))


class Denoiser(PretrainedMixin, nn.Module):
    """``g(u, t_0, y)``: ``u [B, *data_shape]``, ``t_0`` a number or ``[B]``, labels ``y [B]``
    (long, ``0..num_classes-1``, or ``num_classes`` = the null class) or None (the null class)
    -> ``x [B, *data_shape]``.

    ``data_shape``: ``[D]`` or ``[C, H, W]`` (the teacher's); ``num_classes > 0`` adds a class
    embedding with a null class (unconditional rows).  ``arch``: ``"mlp"`` (residual MLP of
    width ``hidden`` over the flat data) or ``"conv"`` (``hidden`` channels of 3x3
    convolutions; images only); ``blocks`` residual blocks; ``context_dim``: size of the
    time/class context; ``t_min``: the ``t_d`` it was distilled at (``ntm distill`` records
    it), which :meth:`NTM.sample <ntm_engine.models.NTM.sample>` then uses as the grid's
    ``t_0``.  A new denoiser is the identity (zero-initialised head).
    """

    def __init__(self, data_shape: Sequence[int], num_classes: int = 0, *, arch: str = "mlp",
                 hidden: int = 256, blocks: int = 2, context_dim: int = 64,
                 t_min: Optional[float] = None):
        super().__init__()
        data_shape = tuple(int(s) for s in data_shape)
        if len(data_shape) not in (1, 3) or min(data_shape) < 1:
            raise ValueError(f"Denoiser: data_shape must be [D] or [C, H, W], got "
                             f"{list(data_shape)}")
        if arch not in ARCHS:
            raise ValueError(f"Denoiser: arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        if arch == "conv" and len(data_shape) != 3:
            raise ValueError(f"Denoiser: arch 'conv' needs images [C, H, W], got data_shape "
                             f"{list(data_shape)}")
        for name, value, least in (("num_classes", num_classes, 0), ("hidden", hidden, 1),
                                   ("blocks", blocks, 0), ("context_dim", context_dim, 2)):
            if value < least:
                raise ValueError(f"Denoiser: {name} must be >= {least}, got {value}")
        if t_min is not None and not 0 < t_min < 1:
            raise ValueError(f"Denoiser: t_min (the t_d it is trained at) must lie in (0, 1), "
                             f"got {t_min}")
        self.config: Dict[str, Any] = dict(data_shape=list(data_shape), num_classes=num_classes,
                                           arch=arch, hidden=hidden, blocks=blocks,
                                           context_dim=context_dim)
        if t_min is not None:   # (absent from the configs of runs, which keep t_min apart)
            self.config["t_min"] = float(t_min)
        self.t_min = None if t_min is None else float(t_min)
        self.data_shape, self.num_classes, self.arch = data_shape, num_classes, arch
        self.dim = math.prod(data_shape)
        conv = arch == "conv"
        self.time = TimeEmbedding(context_dim)
        self.label = ClassEmbedding(num_classes, context_dim) if num_classes > 0 else None
        if conv:
            C = data_shape[0]
            self.inp = nn.Conv2d(C, hidden, 3, padding=1)
            self.head = nn.Conv2d(hidden, C, 3, padding=1)
        else:
            self.inp = nn.Linear(self.dim, hidden)
            self.head = nn.Linear(hidden, self.dim)
        self.blocks = nn.ModuleList(_ModulatedBlock(hidden, context_dim, conv)
                                    for _ in range(blocks))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def context(self, t: Tensor, y: Optional[Tensor]) -> Tensor:
        """``c [B, context_dim]`` from times ``t [B]`` and labels ``y [B]`` (None: null)."""
        c = self.time(t)
        if self.label is not None:
            c = c + self.label(y, t.shape[0])
        return c

    def forward(self, u: Tensor, t: Union[float, Tensor], y: Union[None, int, Tensor] = None
                ) -> Tensor:
        """``u [B, *data_shape]``, ``t`` (``t_0``) a number or ``[B]``, ``y`` an int, ``[B]`` or
        None -> ``x [B, *data_shape]`` (dtype of ``u``)."""
        B = u.shape[0]
        if tuple(u.shape[1:]) != self.data_shape:
            raise ValueError(f"Denoiser: u must have shape [B, {', '.join(map(str, self.data_shape))}]"
                             f", got {list(u.shape)}")
        t = torch.as_tensor(t, device=u.device, dtype=None if torch.is_tensor(t) else u.dtype)
        t = t.expand(B) if t.dim() == 0 else t
        if t.shape != (B,):
            raise ValueError(f"Denoiser: t must be a number or have shape [{B}], got "
                             f"{list(t.shape)}")
        y = resolve_labels(y, B, self.num_classes, u.device, owner="Denoiser")
        wdtype = self.head.weight.dtype
        c = self.context(t, y).to(wdtype)
        h = u.to(wdtype) if self.arch == "conv" else u.reshape(B, self.dim).to(wdtype)
        h = self.inp(h)
        for blk in self.blocks:
            h = blk(h, c)
        out = self.head(F.silu(h)).reshape(u.shape)
        return u + out.to(u.dtype)

    @classmethod
    def for_teacher(cls, teacher: nn.Module, **kw) -> "Denoiser":
        """A denoiser for ``teacher`` (an NTM): its ``data_shape`` and ``num_classes``."""
        return cls(teacher.data_shape, teacher.num_classes, **kw)
