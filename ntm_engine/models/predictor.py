"""The parallel trajectory predictor ``f_P``: a block-causal Transformer over all levels.

Slot ``k`` (``k = 0..T-1``) reads ``u_{t_{k+1}}`` and predicts ``(mu_k, log sig_k)`` of
``u_{t_k}``; it attends to slots ``j >= k`` only (the same or noisier levels), never to a
cleaner one.  Tokens of slot ``k`` = linear embedding of the patches of ``u_{t_{k+1}}``
+ a learned patch-position embedding + the slot's conditioning vector ``c_k``.
``c_k = MLP(sinusoidal(t_k), sinusoidal(t_{k+1}))`` (+ a class embedding) is the level/time
embedding: it is continuous in the times, so the predictor runs on grids it was not trained
on (other step counts).  ``c_k`` also modulates every LayerNorm (adaLN shift/scale).
With ``checkpoint_blocks`` set, a training pass keeps only each block's input and recomputes
the block in the backward pass (activation checkpointing; ``--checkpoint-predictor``).
A predictor of a model trained on several step counts (``step_counts``) adds a learned
embedding of the trajectory's ``T`` to ``c_k`` (zero at the start) and is then evaluated
only at those ``T``.

Condition tokens (``cond_dim = C > 0``; docs/design.md section 1, "Condition tokens"): the
condition ``y`` may be a :class:`~ntm_engine.condition.Condition` with tokens ``[B, L, C]``
and a padding mask ``[B, L]``.  They become a prefix of ``1 + L`` tokens: a learned null token
(always visible) and the linear projection of each condition token to the width (masked
tokens zeroed first).  The prefix runs through the same blocks, attending only to itself
(bidirectionally, padding masked; adaLN context a learned vector), so it does not depend on
the trajectory; every trajectory token of every slot attends, in each block, to the prefix's
keys/values of that block besides its block-causal trajectory keys.  Without tokens (or with
all of a row's tokens masked: a dropped condition, guidance's unconditional branch) a row
sees the null token only, which keeps every attention row finite.  A predictor without
``cond_dim`` has none of these parameters and computes what it did before.

Output parameterisations (``parameterization``; the head has two zero-initialised chunks
``(h1, h2)`` per slot, ``h2`` soft-clamped to ``(-sigma_clamp, sigma_clamp)``; ``u = u_in``,
step ``t = t_{k+1} -> s = t_k``):

* ``"gaussian"`` (default): the predictor starts as the exact reverse step ``q(x_s | x_t)`` of
  Gaussian data ``N(data_mean, data_std^2 I)``
  (:func:`~ntm_engine.models.schedule.gaussian_reverse`: ``N(A u + b, c^2)``) and learns a
  correction: ``mu = A u + b + c * h1``, ``log sig = log c + h2``.
* ``"flow_matching"``: ``h1`` is a velocity ``v(u, t)`` (the backbone of a flow-matching
  model, :mod:`.flow_matching`), ``mu = A u + B (u - t v)``, ``log sig = log sig_0 + h2``
  with ``(A, B, sig_0)`` of :func:`~ntm_engine.models.schedule.flow_matching_reverse` (the
  posterior ``q(x_s | x_t, x0_hat)`` widened by the data uncertainty of a Gaussian of std
  ``data_std``, so the ``s = 0`` slot has a finite scale).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..condition import labels_of, tokens_of
from ..nn.patches import PatchTokens
from .embedding import ClassEmbedding, TimeEmbedding
from .schedule import flow_matching_reverse, gaussian_reverse

__all__ = ["TrajectoryPredictor", "block_causal_mask", "default_patch_size",
           "PARAMETERIZATIONS"]

PARAMETERIZATIONS = ("gaussian", "flow_matching")

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
    """Pre-LN Transformer block with adaLN (shift, scale) from the slot conditioning;
    ``dropout`` (training only) on the outputs of the attention and of the MLP, before each is
    added to the residual stream."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float = 0.0):
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
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()   # off: the old block, no dropout call
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
        h = h + self.drop(self.proj(o.transpose(1, 2).reshape(B, S, N, W)))
        h = h + self.drop(self.mlp(self.norm2(h) * (1 + sc2) + sh2))
        return h, (k, v)


class TrajectoryPredictor(nn.Module):
    """``f_P``: ``(u_in [B, T, D], t_lo [B, T], t_hi [B, T], y [B], steps=[B]) -> (mu, log_sigma)``, both
    ``[B, T, D]``; slot ``k`` reads ``u_in[:, k] = u_{t_{k+1}}`` and predicts the level at
    ``t_k = t_lo[:, k]`` (``t_hi[:, k] = t_{k+1}``).  ``y``: labels ``[B]``, a
    :class:`~ntm_engine.condition.Condition` (with ``cond_dim > 0`` also condition tokens) or
    None.  ``dropout``: of every block's residual branches in training (a regulariser for
    small data).  See the module docstring for tokens, the condition prefix and the two
    parameterizations."""

    def __init__(self, data_shape: Sequence[int], width: int = 128, depth: int = 4,
                 heads: int = 4, patch_size: Optional[int] = None, num_classes: int = 0,
                 mlp_ratio: float = 4.0, data_mean: float = 0.0, data_std: float = 1.0,
                 sigma_clamp: float = 6.0, parameterization: str = "gaussian", *,
                 step_counts: Optional[Sequence[int]] = None, cond_dim: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, "
                             f"got {parameterization!r}")
        if parameterization == "flow_matching" and not data_std > 0:
            raise ValueError(f"the flow_matching parameterization needs data_std > 0 (the "
                             f"scale of the t_0 = 0 slot), got {data_std}")
        self.parameterization = parameterization
        self.data_shape = tuple(int(s) for s in data_shape)
        self.dim = math.prod(self.data_shape)
        self.patches = PatchTokens(self.data_shape, patch_size or
                                   default_patch_size(self.data_shape))
        self.tokens, self.patch_dim = self.patches.tokens, self.patches.patch_dim
        self.patch_size, self.width = self.patches.patch_size, width
        self.data_mean, self.data_std, self.sigma_clamp = data_mean, data_std, sigma_clamp
        self.embed = nn.Linear(self.patch_dim, width)
        self.pos = nn.Parameter(torch.randn(self.tokens, width) * 0.02)
        self.time = TimeEmbedding(width, n_times=2)
        self.label = ClassEmbedding(num_classes, width) if num_classes > 0 else None
        self.step_counts = None if step_counts is None else tuple(int(c) for c in step_counts)
        if self.step_counts is not None:   # one vector per trained T, zero at the start
            self.steps_embed = nn.Embedding(len(self.step_counts), width)
            nn.init.zeros_(self.steps_embed.weight)
            self.register_buffer("_counts", torch.tensor(self.step_counts), persistent=False)
        self.cond_dim = int(cond_dim)
        if self.cond_dim < 0:
            raise ValueError(f"cond_dim must be >= 0 (0: no condition tokens), got {cond_dim}")
        if self.cond_dim:   # the condition prefix (module docstring)
            self.cond_in = nn.Linear(self.cond_dim, width)
            self.cond_null = nn.Parameter(torch.randn(1, width) * 0.02)
            self.cond_context = nn.Parameter(torch.zeros(width))
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_ratio, dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_mod = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.head = nn.Linear(width, 2 * self.patch_dim)
        for lin in (self.final_mod[1], self.head):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self._masks = {}
        # activation checkpointing of the blocks in training passes (a memory option of the
        # run, not of the model: it changes no result, so it is not a constructor argument)
        self.checkpoint_blocks = False

    # ---------------------------------------------------------------- patches
    def patchify(self, v: Tensor) -> Tensor:
        """``[R, D] -> [R, N, patch_dim]`` (:class:`~ntm_engine.nn.PatchTokens`)."""
        return self.patches.patchify(v)

    def unpatchify(self, v: Tensor) -> Tensor:
        """``[R, N, patch_dim] -> [R, D]`` (inverse of :meth:`patchify`)."""
        return self.patches.unpatchify(v)

    # ---------------------------------------------------------------- pieces
    def condition(self, t_lo: Tensor, t_hi: Tensor, y: Optional[Tensor],
                  steps: Optional[Tensor] = None) -> Tensor:
        """Slot conditioning ``c [B, S, W]`` from ``t_lo, t_hi [B, S]``, labels ``y [B]`` and
        (a predictor with ``step_counts``) the step counts ``steps [B]`` of the trajectories."""
        c = self.time(torch.stack([t_lo, t_hi], dim=-1))
        if self.label is not None:
            c = c + self.label(labels_of(y), t_lo.shape[0]).unsqueeze(1)
        if self.step_counts is not None:
            c = c + self.steps_embed(self.step_index(steps, t_lo.shape[0])).unsqueeze(1)
        return c

    def step_index(self, steps: Optional[Tensor], batch: int) -> Tensor:
        """Indices ``[batch]`` into :attr:`step_counts` of the step counts ``steps [batch]``
        (long); ValueError if ``steps`` is missing or (on the CPU, outside ``torch.compile``:
        reading the values would be a host sync or a graph break) holds an untrained count."""
        if steps is None:
            raise ValueError(f"steps: this predictor was trained on step counts "
                             f"{self.step_counts} and needs the step count of each trajectory "
                             f"(a [{batch}] tensor), got None")
        steps = torch.as_tensor(steps, device=self._counts.device).long().expand(batch)
        hit = steps.unsqueeze(-1) == self._counts
        if steps.device.type == "cpu" and not torch.compiler.is_compiling() \
                and not bool(hit.any(-1).all()):
            bad = sorted(set(steps[~hit.any(-1)].tolist()))
            raise ValueError(f"steps: step count(s) {bad} not trained; this model was trained "
                             f"on {self.step_counts}")
        return hit.long().argmax(-1)

    def _tokens(self, u_in: Tensor, c: Tensor) -> Tensor:
        B, S, D = u_in.shape
        x = self.patchify(u_in.reshape(B * S, D).to(self.embed.weight.dtype))
        return self.embed(x).view(B, S, self.tokens, self.width) + self.pos + c.unsqueeze(2)

    def _head(self, h: Tensor, c: Tensor) -> Tuple[Tensor, Tensor]:
        """The two head chunks ``(h1, h2)``, each ``[B, S, D]``, from features ``h [B, S, N, W]``
        and the slot conditioning ``c [B, S, W]``."""
        B, S = h.shape[:2]
        shift, scale = self.final_mod(c).unsqueeze(2).chunk(2, dim=-1)
        out = self.head(self.norm(h) * (1 + scale) + shift)           # [B, S, N, 2 pd]
        h1, h2 = out.chunk(2, dim=-1)
        h1 = self.unpatchify(h1.reshape(B * S, self.tokens, self.patch_dim)).view(B, S, -1)
        h2 = self.unpatchify(h2.reshape(B * S, self.tokens, self.patch_dim)).view(B, S, -1)
        return h1, h2

    def _output(self, h1: Tensor, h2: Tensor, u_in: Tensor, t_lo: Tensor, t_hi: Tensor
                ) -> Tuple[Tensor, Tensor]:
        """``(mu, log_sigma)`` ``[B, S, D]`` from the head chunks (module docstring)."""
        s, t = t_lo.to(h1.dtype).unsqueeze(-1), t_hi.to(h1.dtype).unsqueeze(-1)
        u = u_in.to(h1.dtype)
        k = self.sigma_clamp
        if self.parameterization == "flow_matching":
            A, B, log_s0 = flow_matching_reverse(s, t, self.data_std)
            mu = A * u + B * (u - t * h1)
        else:
            A, b, log_s0 = gaussian_reverse(s, t, self.data_mean, self.data_std)
            mu = A * u + b + torch.exp(log_s0) * h1
        return mu, log_s0 + k * torch.tanh(h2 / k)

    def prefix_visible(self, y, batch: int, device) -> Optional[Tensor]:
        """Which prefix tokens rows may attend to: bool ``[batch, 1 + L]`` (the null token,
        then the condition's padding mask), or None for a predictor without ``cond_dim``."""
        if not self.cond_dim:
            if tokens_of(y)[0] is not None:
                raise ValueError("cond: condition tokens given to a predictor without "
                                 "condition tokens (cond_dim=0)")
            return None
        null = torch.ones(batch, 1, dtype=torch.bool, device=device)
        mask = tokens_of(y)[1]
        return null if mask is None else torch.cat([null, mask.to(device)], dim=1)

    def prefix(self, y, batch: int, visible: Tensor) -> List[KV]:
        """The condition prefix's keys/values ``[batch, heads, 1 + L, W/heads]`` in each block
        (module docstring); ``visible`` from :meth:`prefix_visible`."""
        dtype = self.cond_in.weight.dtype
        h = self.cond_null.to(dtype).expand(batch, 1, self.width)
        tokens = tokens_of(y)[0]
        if tokens is not None:
            real = visible[:, 1:].unsqueeze(-1)
            tokens = tokens.to(device=h.device, dtype=dtype).masked_fill(~real, 0.0)
            h = torch.cat([h, self.cond_in(tokens)], dim=1)
        h = h.unsqueeze(1)                                              # [B, 1, 1 + L, W]
        c = self.cond_context.to(dtype).expand(batch, 1, self.width)
        mask = visible[:, None, None, :]
        kvs = []
        for blk in self.blocks:
            h, kv = self._run(blk, h, c, mask)
            kvs.append(kv)
        return kvs

    def _run(self, blk: "_Block", h: Tensor, c: Tensor, mask: Tensor,
             past: Optional[KV] = None) -> Tuple[Tensor, KV]:
        """One block, recomputed in the backward pass when :attr:`checkpoint_blocks`."""
        if self.checkpoint_blocks and torch.is_grad_enabled():
            return checkpoint(blk, h, c, mask, past, use_reentrant=False)
        return blk(h, c, mask, past)

    @staticmethod
    def _with_prefix(mask: Tensor, visible: Tensor) -> Tensor:
        """``[B, 1, rows, cols + P]``: the trajectory mask ``mask [rows, cols]`` then the
        prefix columns ``visible [B, P]`` (the prefix's keys come last, as a cache's)."""
        B, P = visible.shape
        rows = mask.shape[0]
        return torch.cat([mask.expand(B, 1, *mask.shape),
                          visible[:, None, None, :].expand(B, 1, rows, P)], dim=-1)

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
    def head_outputs(self, u_in: Tensor, t_lo: Tensor, t_hi: Tensor,
                     y: Optional[Tensor] = None, *, steps: Optional[Tensor] = None
                     ) -> Tuple[Tensor, Tensor]:
        """The raw head chunks ``(h1, h2)`` ``[B, T, D]`` of all slots at once (teacher
        forcing); arguments as :meth:`forward`.  In the ``"flow_matching"`` parameterization
        ``h1`` is the velocity ``v(u_in, t_hi)``."""
        B, T, _ = u_in.shape
        c = self.condition(t_lo, t_hi, y, steps)
        h = self._tokens(u_in, c)
        L = T * self.tokens
        mask = self._mask(L, L, T, h.device)
        visible = self.prefix_visible(y, B, h.device)
        past: List[Optional[KV]] = [None] * len(self.blocks)
        if visible is not None:
            past = self.prefix(y, B, visible)
            mask = self._with_prefix(mask, visible)
        for blk, kv in zip(self.blocks, past):
            h, _ = self._run(blk, h, c, mask, kv)
        return self._head(h, c)

    def forward(self, u_in: Tensor, t_lo: Tensor, t_hi: Tensor, y: Optional[Tensor] = None,
                *, steps: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """All slots at once (teacher forcing): ``u_in [B, T, D]``, ``t_lo, t_hi [B, T]``,
        ``y [B]`` or None, ``steps [B]`` (needed with ``step_counts``) -> ``(mu [B, T, D],
        log_sigma [B, T, D])``."""
        h1, h2 = self.head_outputs(u_in, t_lo, t_hi, y, steps=steps)
        return self._output(h1, h2, u_in, t_lo, t_hi)

    def step(self, u_in: Tensor, t_lo: Tensor, t_hi: Tensor, y: Optional[Tensor] = None,
             cache: Optional[List[KV]] = None, *, steps: Optional[Tensor] = None
             ) -> Tuple[Tensor, Tensor, List[KV]]:
        """One slot with a KV cache of the noisier slots already run: ``u_in [B, D]``,
        ``t_lo, t_hi [B]`` -> ``(mu [B, D], log_sigma [B, D], cache)``.  Start with
        ``cache=None`` at the noisiest slot and go towards ``t_0``, with the same ``y`` at
        every step (the first step puts the condition prefix in the cache, after which it
        stays at the cache's end)."""
        u_in, t_lo, t_hi = u_in.unsqueeze(1), t_lo.unsqueeze(1), t_hi.unsqueeze(1)
        c = self.condition(t_lo, t_hi, y, steps)
        h = self._tokens(u_in, c)
        visible = self.prefix_visible(y, h.shape[0], h.device)
        if visible is not None and cache is None:
            cache = self.prefix(y, h.shape[0], visible)
        past_len = 0 if cache is None else cache[0][0].shape[2]
        mask = self._mask(self.tokens, self.tokens + past_len, 1, h.device)
        if visible is not None:
            mask = self._with_prefix(mask[:, :mask.shape[1] - visible.shape[1]], visible)
        new_cache = []
        for i, blk in enumerate(self.blocks):
            h, kv = blk(h, c, mask, None if cache is None else cache[i])
            new_cache.append(kv)
        mu, log_sigma = self._output(*self._head(h, c), u_in, t_lo, t_hi)
        return mu[:, 0], log_sigma[:, 0], new_cache
