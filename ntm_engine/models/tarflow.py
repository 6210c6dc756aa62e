"""A standalone TarFlow-style normalizing flow over images (or vectors) from the engine's
autoregressive blocks (:class:`~ntm_engine.nn.AutoregressiveFlowBlock`): data ``x`` is cut into
patch tokens, mapped through ``blocks`` blocks (scan direction alternating) to a latent
``z ~ N(0, I)``.  Training is reversible by default (no per-block activations held).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..nn import JacobiReport, PatchTokens, autoregressive_stack, decode
from .likelihood import uniform_dequantize
from .predictor import default_patch_size
from .pretrained import PretrainedMixin

__all__ = ["TarFlow"]


class TarFlow(PretrainedMixin, nn.Module):
    """Unconditional flow on data of ``data_shape`` (``[C, H, W]`` or ``[D]``).

    ``patch_size`` (None: :func:`~.predictor.default_patch_size`), ``blocks`` autoregressive
    blocks, each a causal Transformer of ``depth`` layers, ``width`` features and ``heads``
    heads; scales soft-clamped by ``clamp``; ``reversible`` training backward.
    """

    def __init__(self, data_shape: Sequence[int], *, patch_size: Optional[int] = None,
                 blocks: int = 4, width: int = 128, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0, clamp: Optional[float] = 2.0, reversible: bool = True):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.config = dict(data_shape=list(self.data_shape), patch_size=patch_size, blocks=blocks,
                           width=width, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
                           clamp=clamp, reversible=reversible)
        self.patches = PatchTokens(self.data_shape,
                                   patch_size or default_patch_size(self.data_shape))
        self.dim = self.patches.dim
        self.flow = autoregressive_stack(self.patches.tokens, self.patches.patch_dim, blocks,
                                         width=width, depth=depth, heads=heads,
                                         mlp_ratio=mlp_ratio, clamp=clamp, reversible=reversible)

    def _check(self, name: str, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.data_shape or x.dim() != len(self.data_shape) + 1:
            raise ValueError(f"TarFlow: argument '{name}' must have shape "
                             f"[B, {', '.join(map(str, self.data_shape))}], got {list(x.shape)}")

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Data to latent: ``x [B, *data_shape] -> (z [B, *data_shape], logdet [B])``."""
        self._check("x", x)
        z, logdet = self.flow(self.patches.patchify(x))
        return self.patches.unpatchify(z).view(x.shape), logdet

    def inverse(self, z: Tensor, *, method: str = "kv", tol: float = 1e-6,
                max_iters: Optional[int] = None) -> Tuple[Tensor, Tensor, List[JacobiReport]]:
        """Latent to data: ``z [B, *data_shape] -> (x, logdet of the inverse [B], reports)``;
        ``method`` ``"kv"`` (exact, sequential) or ``"jacobi"`` (parallel fixed point with
        ``tol``/``max_iters``; one report per block), see :func:`~ntm_engine.nn.decode`."""
        self._check("z", z)
        x, logdet, reports = decode(self.flow, self.patches.patchify(z), method=method, tol=tol,
                                    max_iters=max_iters)
        return self.patches.unpatchify(x).view(z.shape), logdet, reports

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x) [B]`` in nats (standard normal latent)."""
        z, logdet = self(x)
        zz = z.reshape(z.shape[0], -1).to(logdet.dtype)
        return logdet - 0.5 * zz.pow(2).sum(1) - 0.5 * self.dim * math.log(2 * math.pi)

    def bits_per_dim(self, x: Tensor, bins: int = 256, *, dequantize: bool = False,
                     generator: Optional[torch.Generator] = None) -> Tensor:
        """``[B]`` bits/dim of discrete data with ``bins`` bins on [-1, 1] (digits: 17):
        ``-log p(x) / (D ln 2) + log2(bins / 2)`` (the bin width is ``2 / bins``).  ``x``
        must be uniformly dequantised (:func:`ntm_engine.data.dequantize`) unless
        ``dequantize=True``, which adds the noise here (from ``generator``)."""
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"TarFlow.bits_per_dim: bins must be an int >= 2, got {bins!r}")
        if dequantize:
            x = uniform_dequantize(x, 2.0 / bins, generator)
        return -self.log_prob(x) / (self.dim * math.log(2)) + math.log2(bins / 2)

    @torch.no_grad()
    def sample(self, n: int, *, generator: Optional[torch.Generator] = None,
               temperature: float = 1.0, method: str = "kv", tol: float = 1e-6,
               max_iters: Optional[int] = None) -> Tensor:
        """``n`` samples ``[n, *data_shape]``: ``z ~ N(0, temperature^2 I)`` from ``generator``,
        then :meth:`inverse` with ``method``."""
        p = next(self.parameters())
        z = torch.randn(n, *self.data_shape, generator=generator, device=p.device,
                        dtype=p.dtype) * temperature
        return self.inverse(z, method=method, tol=tol, max_iters=max_iters)[0]
