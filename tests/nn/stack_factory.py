"""Builders shared by the tests of ntm_engine.nn: small stacks with non-trivial weights."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from ntm_engine.nn import AffineCoupling, InvertibleLinear, InvertibleSequential, Permutation


def randomize_coupling(layer: AffineCoupling, scale: float, generator: torch.Generator) -> None:
    """Give the zero-initialised last conditioner layer random weights (std ``scale``) so the
    coupling is not the identity."""
    last = layer.net[-1]
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=generator) * scale)
        last.bias.copy_(torch.randn(last.bias.shape, generator=generator) * scale)


def randomize_linear(layer: InvertibleLinear, scale: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def coupling(dim: int, context_dim: int, i: int, hidden: int = 16, dropout: float = 0.0,
             scale: float = 0.3, seed: int = 0, clamp: Optional[float] = 2.0) -> AffineCoupling:
    """Coupling ``i`` of a stack: masks cycle through the prefix and suffix splits (view paths)
    and an interleaved one (gather path)."""
    g = torch.Generator().manual_seed(1000 * seed + i)
    torch.manual_seed(1000 * seed + i)
    mask = [None, torch.arange(dim) % 2 == 1, torch.arange(dim) >= dim // 2][i % 3]
    layer = AffineCoupling(dim, context_dim, hidden=hidden, depth=2, mask=mask, clamp=clamp,
                           dropout=dropout)
    randomize_coupling(layer, scale, g)
    return layer


def make_stack(n_couplings: int = 3, dim: int = 6, context_dim: int = 3, hidden: int = 16,
               dtype: torch.dtype = torch.float64, reversible: bool = True,
               dropout: float = 0.0, scale: float = 0.3, seed: int = 0, mixing: bool = True,
               check_reconstruction: bool = False) -> InvertibleSequential:
    """``n_couplings`` couplings, each followed (when ``mixing``) by a permutation (random and
    reverse alternately) and an LU linear layer with perturbed weights."""
    layers: List[nn.Module] = []
    g = torch.Generator().manual_seed(seed + 77)
    for i in range(n_couplings):
        layers.append(coupling(dim, context_dim, i, hidden, dropout, scale, seed))
        if mixing:
            layers.append(Permutation(dim, mode="random" if i % 2 == 0 else "reverse",
                                      seed=seed + i))
            lin = InvertibleLinear(dim, init="orthogonal", seed=seed + i)
            randomize_linear(lin, 0.1, g)
            layers.append(lin)
    stack = InvertibleSequential(*layers, reversible=reversible,
                                 check_reconstruction=check_reconstruction)
    return stack.to(dtype)


def stack_loss(z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    """A Gaussian NLL-like loss using both outputs, with per-sample weights so that every
    sample's gradient differs."""
    w = torch.linspace(0.5, 1.5, z.shape[0], dtype=logdet.dtype, device=z.device)
    return ((0.5 * z.to(logdet.dtype).pow(2).sum(1) - logdet) * w).sum()


def grads_of(stack: InvertibleSequential, x: torch.Tensor, context: Optional[torch.Tensor],
             reversible: bool):
    """``(z, logdet, [grad x, grad context, *param grads])`` for one forward+backward with
    ``stack.reversible = reversible`` (grads of inputs that do not require grad are None)."""
    stack.reversible = reversible
    stack.zero_grad(set_to_none=True)
    for t in (x, context):
        if t is not None:
            t.grad = None
    z, logdet = stack(x, context)
    stack_loss(z, logdet).backward()
    out = [None if x.grad is None else x.grad.clone(),
           None if context is None or context.grad is None else context.grad.clone()]
    out += [None if p.grad is None else p.grad.clone() for p in stack.parameters()]
    return z.detach(), logdet.detach(), out


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rtol: float, what: str = "") -> None:
    """max |a - b| <= rtol * max |b| (scale-aware relative error of a whole tensor)."""
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = (a.double() - b.double()).abs().max().item()
    ref = b.double().abs().max().item()
    assert err <= rtol * max(ref, 1e-30), f"{what}: max abs err {err:.3e} vs max |ref| {ref:.3e}"
