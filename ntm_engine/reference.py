"""Pure-PyTorch twins of the fused ops: the specification and the test oracle.

Every function here is written for clarity, not speed.  Each fused op in
:mod:`ntm_engine.ops` must agree with its twin (float64 to ~1e-12 relative).

Conventions (docs/design.md, sections 2 and 3):

* All per-element tensors share one shape ``[B, ...]``; per-sample results
  (log-dets, NLLs) have shape ``[B]`` and are sums over every non-batch dim.
* Maths runs in the *accumulation dtype*: float64 for float64 inputs, float32
  for everything else.  Per-element outputs are cast back to the input dtype;
  per-sample outputs stay in the accumulation dtype.
* ``clamp=None`` means ``s = scale_logits``; otherwise
  ``s = clamp * tanh(scale_logits / clamp)`` (a soft clamp to ``(-clamp, clamp)``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "accumulation_dtype",
    "soft_clamp",
    "affine_coupling",
    "affine_coupling_inverse",
    "affine_coupling_backward",
    "gaussian_nll",
    "gaussian_nll_backward",
    "autoregressive_decode",
]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_sample_sum(t: Tensor) -> Tensor:
    """``[B, ...] -> [B]``: sum over all non-batch dims (a rank-1 tensor is its own sum)."""
    return t.sum(dim=tuple(range(1, t.dim()))) if t.dim() > 1 else t.clone()


def soft_clamp(scale_logits: Tensor, clamp: Optional[float]) -> Tensor:
    """``s = clamp * tanh(l / clamp)``, or ``s = l`` when ``clamp`` is None."""
    if clamp is None:
        return scale_logits
    return clamp * torch.tanh(scale_logits / clamp)


def affine_coupling(
    x: Tensor, shift: Tensor, scale_logits: Tensor, clamp: Optional[float] = None
) -> Tuple[Tensor, Tensor]:
    """Forward affine coupling: ``y = x * exp(s) + shift``.

    Returns ``(y [B, ...] in x.dtype, logdet [B] in the accumulation dtype)``
    with ``logdet[b] = sum s[b]``.
    """
    acc = accumulation_dtype(x.dtype)
    s = soft_clamp(scale_logits.to(acc), clamp)
    y = x.to(acc) * torch.exp(s) + shift.to(acc)
    return y.to(x.dtype), _per_sample_sum(s)


def affine_coupling_inverse(
    y: Tensor, shift: Tensor, scale_logits: Tensor, clamp: Optional[float] = None
) -> Tuple[Tensor, Tensor]:
    """Inverse affine coupling: ``x = (y - shift) * exp(-s)``; returns ``(x, -sum s)``."""
    acc = accumulation_dtype(y.dtype)
    s = soft_clamp(scale_logits.to(acc), clamp)
    x = (y.to(acc) - shift.to(acc)) * torch.exp(-s)
    return x.to(y.dtype), -_per_sample_sum(s)


def affine_coupling_backward(
    y: Tensor,
    shift: Tensor,
    scale_logits: Tensor,
    grad_y: Tensor,
    grad_logdet: Optional[Tensor],
    clamp: Optional[float] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward of :func:`affine_coupling` computed from its *output* ``y``.

    Reconstructs ``x = (y - shift) * exp(-s)`` and returns
    ``(x, grad_x, grad_shift, grad_scale_logits)``, all of shape ``[B, ...]`` in
    ``y.dtype``.  ``grad_logdet`` has shape ``[B]`` (None means zero).

    Derivation: ``dy/dx = exp(s)``, ``dy/dshift = 1``, ``dy/ds = x exp(s) = y - shift``,
    ``dlogdet/ds = 1`` and ``ds/dl = 1 - (s / clamp)^2`` (1 without clamp).
    """
    acc = accumulation_dtype(y.dtype)
    yy, b, gy = y.to(acc), shift.to(acc), grad_y.to(acc)
    s = soft_clamp(scale_logits.to(acc), clamp)
    x = (yy - b) * torch.exp(-s)
    grad_x = gy * torch.exp(s)
    grad_s = gy * (yy - b)
    if grad_logdet is not None:
        view = (-1,) + (1,) * (y.dim() - 1)
        grad_s = grad_s + grad_logdet.to(acc).reshape(view)
    if clamp is not None:
        grad_s = grad_s * (1 - (s / clamp) ** 2)
    out = y.dtype
    return x.to(out), grad_x.to(out), gy.to(out), grad_s.to(out)


def gaussian_nll(u: Tensor, mean: Tensor, log_sigma: Tensor) -> Tensor:
    """Per-sample ``sum [1/2 ((u - mean) exp(-log_sigma))^2 + log_sigma]``.

    Shape ``[B, ...] -> [B]`` in the accumulation dtype.  The constant
    ``(D/2) log(2 pi)`` is *not* included.
    """
    acc = accumulation_dtype(u.dtype)
    ls = log_sigma.to(acc)
    z = (u.to(acc) - mean.to(acc)) * torch.exp(-ls)
    return _per_sample_sum(0.5 * z * z + ls)


def gaussian_nll_backward(
    u: Tensor, mean: Tensor, log_sigma: Tensor, grad: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`gaussian_nll`: ``(grad_u, grad_mean, grad_log_sigma)`` in ``u.dtype``.

    With ``z = (u - mean) exp(-log_sigma)`` and per-sample upstream ``grad [B]``:
    ``grad_u = grad z exp(-log_sigma)``, ``grad_mean = -grad_u``,
    ``grad_log_sigma = grad (1 - z^2)``.
    """
    acc = accumulation_dtype(u.dtype)
    ls = log_sigma.to(acc)
    inv_sigma = torch.exp(-ls)
    z = (u.to(acc) - mean.to(acc)) * inv_sigma
    g = grad.to(acc).reshape((-1,) + (1,) * (u.dim() - 1))
    grad_u = g * z * inv_sigma
    grad_ls = g * (1 - z * z)
    out = u.dtype
    return grad_u.to(out), (-grad_u).to(out), grad_ls.to(out)


def _modulated_norm(h: Tensor, modulation: Optional[Tensor], layer: int, which: int) -> Tensor:
    """``LN(h) * (1 + scale) + shift`` with adaLN pair ``which`` (0: attention, 2: MLP) of
    ``layer``; plain ``LN(h)`` without modulation (no affine, eps 1e-5 as ``nn.LayerNorm``)."""
    a = F.layer_norm(h, h.shape[-1:])
    if modulation is None:
        return a
    return a * (1 + modulation[layer, which + 1].unsqueeze(1)) + modulation[layer, which].unsqueeze(1)


def autoregressive_decode(y: Tensor, params: Sequence[Tensor], modulation: Optional[Tensor],
                          heads: int, clamp: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """Exact inverse of one autoregressive flow block
    (:class:`~ntm_engine.nn.AutoregressiveFlowBlock`), token by token with a KV cache.

    ``y [B, L, P]`` in the block's scan order -> ``(x [B, L, P] in y.dtype, logdet of the
    inverse [B] in the accumulation dtype)``.  Token ``i``: the causal pre-norm Transformer
    reads ``start + pos[0]`` (``i = 0``) or ``embed(x_{i-1}) + pos[i]``, attends to the keys and
    values of tokens ``0..i``; its head ``out(LN(h))`` gives ``(shift, scale_logits)`` and
    ``x_i = affine_coupling_inverse(y_i, shift, scale_logits)``.

    ``params``: ``embed.weight [W, P], embed.bias, start [W], pos [N >= L, W]``; per layer
    ``qkv.weight [3W, W], qkv.bias, proj.weight [W, W], proj.bias, mlp.0.weight [H, W],
    mlp.0.bias, mlp.2.weight [W, H], mlp.2.bias``; ``out.weight [2P, W], out.bias``.
    ``modulation [depth, 4, B, W]``: each layer's adaLN ``(shift1, scale1, shift2, scale2)``,
    or None.  Differentiable (the KV cache is concatenated while autograd records).
    """
    embed_w, embed_b, start, pos = params[:4]
    out_w, out_b = params[-2:]
    layers = [params[4 + 8 * i:12 + 8 * i] for i in range((len(params) - 6) // 8)]
    B, L, _ = y.shape
    W = embed_w.shape[0]
    d = W // heads
    record = torch.is_grad_enabled()
    keys: List[Optional[Tensor]] = [None] * len(layers)
    values: List[Optional[Tensor]] = [None] * len(layers)
    tokens: List[Tensor] = []
    logdet = torch.zeros(B, dtype=accumulation_dtype(y.dtype), device=y.device)
    inp = start.expand(B, 1, W)
    for i in range(L):
        h = inp + pos[i]
        for n, (qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b) in enumerate(layers):
            a = _modulated_norm(h, modulation, n, 0)
            q, k, v = F.linear(a, qkv_w, qkv_b).view(B, 1, 3, heads, d).permute(2, 0, 3, 1, 4)
            if keys[n] is None:
                shape = (B, heads, 0 if record else L, d)
                keys[n], values[n] = k.new_empty(shape), v.new_empty(shape)
            if record:   # an in-place write would invalidate what autograd saved
                keys[n], values[n] = torch.cat([keys[n], k], 2), torch.cat([values[n], v], 2)
                k_all, v_all = keys[n], values[n]
            else:
                keys[n][:, :, i:i + 1], values[n][:, :, i:i + 1] = k, v
                k_all, v_all = keys[n][:, :, :i + 1], values[n][:, :, :i + 1]
            o = F.scaled_dot_product_attention(q, k_all, v_all)
            h = h + F.linear(o.transpose(1, 2).reshape(B, 1, W), proj_w, proj_b)
            a = _modulated_norm(h, modulation, n, 2)
            h = h + F.linear(F.gelu(F.linear(a, fc1_w, fc1_b)), fc2_w, fc2_b)
        head = F.linear(_modulated_norm(h, None, 0, 0), out_w, out_b).to(y.dtype)
        shift, logits = head.chunk(2, dim=-1)
        x_i, ld = affine_coupling_inverse(y[:, i:i + 1], shift, logits, clamp)
        tokens.append(x_i)
        logdet = logdet + ld
        inp = F.linear(x_i.to(embed_w.dtype), embed_w, embed_b)
    x = torch.cat(tokens, dim=1) if tokens else y.new_empty(y.shape)
    return x, logdet
