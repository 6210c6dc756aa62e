"""The parallel trajectory predictor ``f_P``: a block-causal Transformer over all levels.

Slot ``k`` (``k = 0..T-1``) reads ``u_{t_{k+1}}`` and predicts ``(mu_k, log sig_k)`` of
``u_{t_k}``; it attends to slots ``j >= k`` only (the same or noisier levels), never to a
cleaner one.  Tokens of slot ``k`` = linear embedding of the patches of ``u_{t_{k+1}}``
+ a learned patch-position embedding + the slot's conditioning vector ``c_k``.
``c_k = MLP(sinusoidal(t_k), sinusoidal(t_{k+1}))`` (+ a class embedding) is the level/time
embedding: it is continuous in the times, so the predictor runs on grids it was not trained
on (other step counts).  ``c_k`` also modulates every LayerNorm (adaLN shift/scale).

Output parameterisation: the predictor starts as the exact reverse step ``q(x_{t_k} |
x_{t_{k+1}})`` of Gaussian data ``N(data_mean, data_std^2 I)``
(:func:`~ntm_engine.models.schedule.gaussian_reverse`: ``N(A u + b, c^2)``) and learns a
correction: ``mu = A u + b + c * dmu``, ``log sig = log c + dls``, where ``(dmu, dls)`` come
from a zero-initialised head.  ``dls`` is soft-clamped to ``(-sigma_clamp, sigma_clamp)``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embedding import ClassEmbedding, TimeEmbedding
from .schedule import gaussian_reverse

__all__ = ["TrajectoryPredictor", "block_causal_mask", "default_patch_size"]

KV = Tuple[Tensor, Tensor]


def block_causal_mask(levels: int, tokens: int, device=None) -> Tensor:
    """Bool ``[L, L]``, ``L = levels*tokens`` (True = may attend): a token of slot ``k``
    attends to every token of slots ``j >= k``."""
    slot = torch.arange(levels, device=device).repeat_interleave(tokens)
    return slot.unsqueeze(0) >= slot.unsqueeze(1)


def default_patch_size(data_shape: Sequence[int]) -> int:
    """Images: the largest of 4, 2, 1 dividing H and W.  Vectors: the largest divisor of D
    that is at most 64 (one token per level for small D)."""
    if len(data_shape) == 3:
        _, H, W = data_shape
        return next(p for p in (4, 2, 1) if H % p == 0 and W % p == 0)
    D = math.prod(data_shape)
    return max(p for p in range(1, min(D, 64) + 1) if D % p == 0)


class _Block(nn.Module):
    """Pre-LN Transformer block with adaLN (shift, scale) from the slot conditioning."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, width))
        self.mod = nn.Sequential(nn.SiLU(), nn.Linear(width, 4 * width))
        nn.init.zeros_(self.mod[1].weight)
        nn.init.zeros_(self.mod[1].bias)

    def forward(self, h: Tensor, c: Tensor, mask: Tensor, past: Optional[KV] = None
                ) -> Tuple[Tensor, KV]:
        """``h [B, S, N, W]`` (S slots of N tokens), ``c [B, S, W]``; ``past`` = keys/values
        of later (noisier) slots ``[B, heads, M, W/heads]``, appended after the new ones.
        ``mask`` is bool ``[S*N, S*N + M]``.  Returns ``(h, (keys, values))`` incl. ``past``."""
        B, S, N, W = h.shape
        sh1, sc1, sh2, sc2 = self.mod(c).unsqueeze(2).chunk(4, dim=-1)
        a = self.norm1(h) * (1 + sc1) + sh1
        qkv = self.qkv(a).view(B, S * N, 3, self.heads, W // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if past is not None:
            k = torch.cat([k, past[0]], dim=2)
            v = torch.cat([v, past[1]], dim=2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        h = h + self.proj(o.transpose(1, 2).reshape(B, S, N, W))
        h = h + self.mlp(self.norm2(h) * (1 + sc2) + sh2)
        return h, (k, v)


class TrajectoryPredictor(nn.Module):
    """``f_P``: ``(u_in [B, T, D], t_lo [B, T], t_hi [B, T], y [B]) -> (mu, log_sigma)``, both
    ``[B, T, D]``; slot ``k`` reads ``u_in[:, k] = u_{t_{k+1}}`` and predicts the level at
    ``t_k = t_lo[:, k]`` (``t_hi[:, k] = t_{k+1}``).  See the module docstring for tokens and
    parameterisation."""

    def __init__(self, data_shape: Sequence[int], width: int = 128, depth: int = 4,
                 heads: int = 4, patch_size: Optional[int] = None, num_classes: int = 0,
                 mlp_ratio: float = 4.0, data_mean: float = 0.0, data_std: float = 1.0,
                 sigma_clamp: float = 6.0):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.dim = math.prod(self.data_shape)
        p = patch_size or default_patch_size(self.data_shape)
        if len(self.data_shape) == 3:
            C, H, W = self.data_shape
            if H % p or W % p:
                raise ValueError(f"patch_size {p} must divide the image size {H}x{W}")
            self.tokens, self.patch_dim = (H // p) * (W // p), C * p * p
        else:
            if self.dim % p:
                raise ValueError(f"patch_size {p} must divide the data dimension {self.dim}")
            self.tokens, self.patch_dim = self.dim // p, p
        self.patch_size, self.width = p, width
        self.data_mean, self.data_std, self.sigma_clamp = data_mean, data_std, sigma_clamp
        self.embed = nn.Linear(self.patch_dim, width)
        self.pos = nn.Parameter(torch.randn(self.tokens, width) * 0.02)
        self.time = TimeEmbedding(width, n_times=2)
        self.label = ClassEmbedding(num_classes, width) if num_classes > 0 else None
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_mod = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.head = nn.Linear(width, 2 * self.patch_dim)
        for lin in (self.final_mod[1], self.head):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self._masks = {}

    # ---------------------------------------------------------------- patches
    def patchify(self, v: Tensor) -> Tensor:
        """``[R, D] -> [R, N, patch_dim]``."""
        R, p = v.shape[0], self.patch_size
        if len(self.data_shape) == 3:
            C, H, W = self.data_shape
            v = v.reshape(R, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        return v.reshape(R, self.tokens, self.patch_dim)

    def unpatchify(self, v: Tensor) -> Tensor:
        """``[R, N, patch_dim] -> [R, D]`` (inverse of :meth:`patchify`)."""
        R, p = v.shape[0], self.patch_size
        if len(self.data_shape) == 3:
            C, H, W = self.data_shape
            v = v.reshape(R, H // p, W // p, C, p, p).permute(0, 3, 1, 4, 2, 5)
        return v.reshape(R, self.dim)

    # ---------------------------------------------------------------- pieces
    def condition(self, t_lo: Tensor, t_hi: Tensor, y: Optional[Tensor]) -> Tensor:
        """Slot conditioning ``c [B, S, W]`` from ``t_lo, t_hi [B, S]`` and labels ``y [B]``."""
        c = self.time(torch.stack([t_lo, t_hi], dim=-1))
        if self.label is not None:
            c = c + self.label(y, t_lo.shape[0]).unsqueeze(1)
        return c

    def _tokens(self, u_in: Tensor, c: Tensor) -> Tensor:
        B, S, D = u_in.shape
        x = self.patchify(u_in.reshape(B * S, D).to(self.embed.weight.dtype))
        return self.embed(x).view(B, S, self.tokens, self.width) + self.pos + c.unsqueeze(2)

    def _output(self, h: Tensor, c: Tensor, u_in: Tensor, t_lo: Tensor, t_hi: Tensor
                ) -> Tuple[Tensor, Tensor]:
        B, S = h.shape[:2]
        shift, scale = self.final_mod(c).unsqueeze(2).chunk(2, dim=-1)
        out = self.head(self.norm(h) * (1 + scale) + shift)           # [B, S, N, 2 pd]
        dmu, dls = out.chunk(2, dim=-1)
        dmu = self.unpatchify(dmu.reshape(B * S, self.tokens, self.patch_dim)).view(B, S, -1)
        dls = self.unpatchify(dls.reshape(B * S, self.tokens, self.patch_dim)).view(B, S, -1)
        A, b, log_c = gaussian_reverse(t_lo.to(dmu.dtype), t_hi.to(dmu.dtype),
                                       self.data_mean, self.data_std)
        A, b, log_c = A.unsqueeze(-1), b.unsqueeze(-1), log_c.unsqueeze(-1)
        k = self.sigma_clamp
        mu = A * u_in.to(dmu.dtype) + b + torch.exp(log_c) * dmu
        log_sigma = log_c + k * torch.tanh(dls / k)
        return mu, log_sigma

    def _mask(self, rows: int, cols: int, levels: int, device) -> Tensor:
        key = (rows, cols, levels, str(device))
        if key not in self._masks:
            if rows == cols:
                m = block_causal_mask(levels, self.tokens, device)
            else:  # one new slot against itself and cached noisier slots: all allowed
                m = torch.ones(rows, cols, dtype=torch.bool, device=device)
            self._masks[key] = m
        return self._masks[key]

    # ---------------------------------------------------------------- passes
    def forward(self, u_in: Tensor, t_lo: Tensor, t_hi: Tensor, y: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        """All slots at once (teacher forcing): ``u_in [B, T, D]``, ``t_lo, t_hi [B, T]``,
        ``y [B]`` or None -> ``(mu [B, T, D], log_sigma [B, T, D])``."""
        B, T, _ = u_in.shape
        c = self.condition(t_lo, t_hi, y)
        h = self._tokens(u_in, c)
        L = T * self.tokens
        mask = self._mask(L, L, T, h.device)
        for blk in self.blocks:
            h, _ = blk(h, c, mask)
        return self._output(h, c, u_in, t_lo, t_hi)

    def step(self, u_in: Tensor, t_lo: Tensor, t_hi: Tensor, y: Optional[Tensor] = None,
             cache: Optional[List[KV]] = None) -> Tuple[Tensor, Tensor, List[KV]]:
        """One slot with a KV cache of the noisier slots already run: ``u_in [B, D]``,
        ``t_lo, t_hi [B]`` -> ``(mu [B, D], log_sigma [B, D], cache)``.  Start with
        ``cache=None`` at the noisiest slot and go towards ``t_0``."""
        u_in, t_lo, t_hi = u_in.unsqueeze(1), t_lo.unsqueeze(1), t_hi.unsqueeze(1)
        c = self.condition(t_lo, t_hi, y)
        h = self._tokens(u_in, c)
        past_len = 0 if cache is None else cache[0][0].shape[2]
        mask = self._mask(self.tokens, self.tokens + past_len, 1, h.device)
        new_cache = []
        for i, blk in enumerate(self.blocks):
            h, kv = blk(h, c, mask, None if cache is None else cache[i])
            new_cache.append(kv)
        mu, log_sigma = self._output(h, c, u_in, t_lo, t_hi)
        return mu[:, 0], log_sigma[:, 0], new_cache
