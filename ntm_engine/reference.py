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

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "accumulation_dtype",
    "soft_clamp",
    "affine_coupling",
    "affine_coupling_inverse",
    "affine_coupling_backward",
    "gaussian_nll",
    "gaussian_nll_backward",
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
