"""Invertible linear mixing of the features (a "1x1 convolution" on flat ``[B, dim]``)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .base import InvertibleModule, ReverseStepResult, accumulation_dtype, grads_for

__all__ = ["InvertibleLinear"]


def _no_autocast(t: Tensor):
    """The LU maths stays in float32 or wider, also inside an autocast region."""
    return torch.autocast(device_type=t.device.type, enabled=False)


class InvertibleLinear(InvertibleModule):
    """``y = x @ W^T`` with an LU-parametrised ``W = P L (U + diag(sign * exp(log_scale)))``.

    * ``P``: a fixed row permutation (buffer ``perm``: ``(P M)[i] = M[perm[i]]``),
    * ``L``: unit lower-triangular (parameter ``lower``, strictly-lower part used),
    * ``U``: strictly upper-triangular (parameter ``upper``, strictly-upper part used),
    * the diagonal ``sign * exp(log_scale)`` (``sign``: a fixed ±1 buffer; ``log_scale``:
      parameter ``[dim]``), so ``log|det W| = sum(log_scale)`` for every sample.

    ``init="identity"`` (default: a new flow is the identity) starts at ``W = I``;
    ``init="orthogonal"`` starts at a random rotation (Glow), drawn from ``generator``, else a
    ``torch.Generator`` seeded with ``seed``, else the global RNG.  Shapes: ``x [B, dim]``,
    log-dets ``[B]`` in the accumulation dtype; the maths runs in float32 or wider (autocast
    is switched off inside).  Forward
    and inverse cost ``O(dim^3 + B dim^2)`` (``W`` is rebuilt from its factors each call), meant
    for the modest ``dim`` of flat features.  Ignores the context.
    """

    def __init__(self, dim: int, init: str = "identity", seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if dim < 1:
            raise ValueError(f"InvertibleLinear: dim must be >= 1, got {dim}")
        if init == "identity":
            perm = torch.arange(dim)
            lower = torch.zeros(dim, dim)
            upper = torch.zeros(dim, dim)
            diag = torch.ones(dim)
        elif init == "orthogonal":
            if generator is None and seed is not None:
                generator = torch.Generator().manual_seed(seed)
            q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
            p, lo, up = torch.linalg.lu(q)
            perm = p.argmax(dim=1)  # (P M)[i] = M[perm[i]]
            lower = torch.tril(lo, -1).float()
            upper = torch.triu(up, 1).float()
            diag = torch.diagonal(up).float()
        else:
            raise ValueError(f"InvertibleLinear: init must be 'identity' or 'orthogonal', "
                             f"got {init!r}")
        self.dim = dim
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))
        self.register_buffer("sign", torch.sign(diag))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(upper)
        self.log_scale = nn.Parameter(diag.abs().log())

    # ------------------------------------------------------------------ pieces

    def _factors(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """``(L, U')``, both ``[dim, dim]`` in ``dtype``: ``W = (L @ U')[perm]``."""
        eye = torch.eye(self.dim, dtype=dtype, device=self.lower.device)
        lower = torch.tril(self.lower.to(dtype), -1) + eye
        diag = self.sign.to(dtype) * torch.exp(self.log_scale.to(dtype))
        upper = torch.triu(self.upper.to(dtype), 1) + torch.diag(diag)
        return lower, upper

    def weight(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """The matrix ``W [dim, dim]`` (``y = x @ W^T``), in ``dtype`` (default: float32 or
        wider, from the parameters' dtype)."""
        dtype = dtype or accumulation_dtype(self.log_scale.dtype)
        lower, upper = self._factors(dtype)
        return (lower @ upper).index_select(0, self.perm)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"InvertibleLinear: expected a tensor of shape [B, {self.dim}], "
                             f"got {list(x.shape)}")

    def _logdet(self, x: Tensor, sign: float) -> Tensor:
        acc = accumulation_dtype(x.dtype)
        total = self.log_scale.to(acc).sum() * sign
        return total.expand(x.shape[0]).clone() if x.shape[0] else x.new_zeros(0, dtype=acc)

    def _solve(self, y: Tensor) -> Tensor:
        """``x = y @ W^{-T}`` in float32 or wider (two triangular solves), ``[B, dim]``."""
        acc = accumulation_dtype(y.dtype)
        lower, upper = self._factors(acc)
        m = y.to(acc).index_select(1, self.inverse_perm)  # m = x (L U')^T
        a = torch.linalg.solve_triangular(lower.T, m, upper=True, left=False,
                                          unitriangular=True)  # a L^T = m
        return torch.linalg.solve_triangular(upper.T, a, upper=False, left=False)  # x U'^T = a

    # ------------------------------------------------------------------ directions

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Data to latent: ``x [B, dim] -> (x @ W^T [B, dim], sum(log_scale) [B])``."""
        self._check(x)
        acc = accumulation_dtype(x.dtype)
        with _no_autocast(x):
            y = x.to(acc) @ self.weight(acc).T
        return y.to(x.dtype), self._logdet(x, 1.0)

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Latent to data: ``y [B, dim] -> (y @ W^{-T} [B, dim], -sum(log_scale) [B])``."""
        self._check(y)
        with _no_autocast(y):
            x = self._solve(y)
        return x.to(y.dtype), self._logdet(y, -1.0)

    def reverse_step(self, y: Tensor, grad_y: Tensor, grad_logdet: Optional[Tensor] = None,
                     context: Optional[Tensor] = None) -> ReverseStepResult:
        """Rebuild ``x = y W^{-T}``; ``grad_x = grad_y W``; ``dL/dW = grad_y^T x`` is pulled
        back to ``(lower, upper, log_scale)`` by ``torch.autograd.grad`` through the small
        ``[dim, dim]`` factor graph (plus ``sum_b grad_logdet[b]`` on each ``log_scale``)."""
        self._check(y)
        acc = accumulation_dtype(y.dtype)
        params = tuple(self.parameters())
        with _no_autocast(y):
            x = self._solve(y)
            gy = grad_y.to(acc)
            with torch.enable_grad():
                w = self.weight(acc)
                outs, gouts = [w], [gy.T @ x]
                if grad_logdet is not None:
                    outs.append(self.log_scale.to(acc).sum())
                    gouts.append(grad_logdet.to(acc).sum())
            grad_x = gy @ w.detach()
            _, _, param_grads = grads_for(outs, gouts, None, None, params)
        return x.to(y.dtype), grad_x.to(y.dtype), None, param_grads

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
