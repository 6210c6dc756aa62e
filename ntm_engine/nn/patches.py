"""Patch tokenisation of flat rows: ``[R, D] <-> [R, L, P]`` (images ``[C, H, W]`` cut into
``p x p`` patches in row-major patch order, each patch flattened channel-first; vectors cut into
``D / p`` consecutive chunks).  The transporter and the predictor
(:meth:`ntm_engine.models.predictor.TrajectoryPredictor.patchify`) both cut their rows with it,
so they see the same tokens."""
from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor

__all__ = ["PatchTokens"]


class PatchTokens:
    """Cuts rows of data of ``data_shape`` (``[D]`` or ``[C, H, W]``) into ``tokens`` patches
    of ``patch_dim`` features; ``patch_size`` must divide ``H`` and ``W`` (images) or ``D``."""

    def __init__(self, data_shape: Sequence[int], patch_size: int):
        self.data_shape = tuple(int(s) for s in data_shape)
        if len(self.data_shape) not in (1, 3) or min(self.data_shape) < 1:
            raise ValueError(f"PatchTokens: data_shape must be [D] or [C, H, W] with positive "
                             f"sizes, got {list(data_shape)}")
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"PatchTokens: patch_size must be a positive int, got {patch_size!r}")
        self.dim = math.prod(self.data_shape)
        p = self.patch_size = patch_size
        if len(self.data_shape) == 3:
            C, H, W = self.data_shape
            if H % p or W % p:
                raise ValueError(f"PatchTokens: patch_size {p} must divide the image size "
                                 f"{H}x{W}")
            self.tokens, self.patch_dim = (H // p) * (W // p), C * p * p
        else:
            if self.dim % p:
                raise ValueError(f"PatchTokens: patch_size {p} must divide the data dimension "
                                 f"{self.dim}")
            self.tokens, self.patch_dim = self.dim // p, p

    def patchify(self, v: Tensor) -> Tensor:
        """``[R, D] -> [R, L, P]`` (``L = tokens``, ``P = patch_dim``)."""
        R, p = v.shape[0], self.patch_size
        if len(self.data_shape) == 3:
            C, H, W = self.data_shape
            v = v.reshape(R, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        return v.reshape(R, self.tokens, self.patch_dim)

    def unpatchify(self, v: Tensor) -> Tensor:
        """``[R, L, P] -> [R, D]`` (inverse of :meth:`patchify`)."""
        R, p = v.shape[0], self.patch_size
        if len(self.data_shape) == 3:
            C, H, W = self.data_shape
            v = v.reshape(R, H // p, W // p, C, p, p).permute(0, 3, 1, 4, 2, 5)
        return v.reshape(R, self.dim)

    def __repr__(self) -> str:
        return (f"PatchTokens(data_shape={list(self.data_shape)}, patch_size={self.patch_size},"
                f" tokens={self.tokens}, patch_dim={self.patch_dim})")
