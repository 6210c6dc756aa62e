"""The invertible-layer protocol shared by every module in :mod:`ntm_engine.nn`.

Direction (docs/design.md section 3): ``forward`` maps data to latent, ``x [B, dim] -> (y [B, dim],
logdet [B])``; ``inverse`` maps back, ``y -> (x, logdet of the inverse [B])``.  Log-dets are
per-sample sums in the accumulation dtype (float64 for float64 inputs, float32 otherwise).

The activation-free backward of :class:`~ntm_engine.nn.InvertibleSequential` walks its layers
last to first and asks each one for

    reverse_step(y, grad_y, grad_logdet, context) -> (x, grad_x, grad_context, param_grads)

* ``y`` ``[B, dim]``: the layer's output (from the forward, or rebuilt by the layer above).
* ``grad_y`` ``[B, dim]``: dLoss/dy; ``grad_logdet`` ``[B]`` or None: dLoss/dlogdet.
* ``context`` ``[B, context_dim]`` or None; when ``context.requires_grad`` the layer returns
  ``grad_context`` (same shape), otherwise None.
* returns the rebuilt input ``x`` and ``grad_x`` (both ``[B, dim]``, in ``y.dtype``), and
  ``param_grads``: a tuple aligned with ``tuple(layer.parameters())`` (None for a parameter
  that does not require grad or has no gradient).

A ``reverse_step`` must not call ``.backward()`` (use ``torch.autograd.grad`` on a local graph),
must not write to ``y``, ``grad_y`` or any tensor it did not allocate, and must consume the
global RNG exactly as the layer's ``forward`` did (the stack replays the forward's RNG state
before calling it when the layer holds dropout).  :class:`InvertibleModule` provides a generic
one (inverse, then re-run ``forward`` under autograd); layers override it with a cheaper one.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..reference import accumulation_dtype

__all__ = ["InvertibleModule", "generic_reverse_step", "has_dropout", "accumulation_dtype"]

ReverseStepResult = Tuple[Tensor, Tensor, Optional[Tensor], Tuple[Optional[Tensor], ...]]


def has_dropout(module: nn.Module) -> bool:
    """True when ``module`` (or a submodule) is a dropout layer with ``p > 0`` in training mode:
    its forward draws from the global RNG, so a recomputation must replay the RNG state."""
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            return True
    return False


def grads_for(outputs: Sequence[Tensor], grad_outputs: Sequence[Tensor], x_in: Optional[Tensor],
              context: Optional[Tensor], params: Sequence[Tensor]
              ) -> Tuple[Optional[Tensor], Optional[Tensor], Tuple[Optional[Tensor], ...]]:
    """``torch.autograd.grad`` of ``sum <outputs, grad_outputs>`` with respect to ``x_in`` (if
    given), ``context`` (if it requires grad) and each parameter that requires grad.

    Returns ``(grad_x_in, grad_context, param_grads)``, ``param_grads`` aligned with ``params``
    (None where a parameter does not require grad or is unused).  Never calls ``.backward()``.
    """
    wanted: List[Tensor] = []
    if x_in is not None:
        wanted.append(x_in)
    want_ctx = context is not None and context.requires_grad
    if want_ctx:
        wanted.append(context)
    p_slots = [i for i, p in enumerate(params) if p.requires_grad]
    wanted += [params[i] for i in p_slots]
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad and g is not None]
    if not wanted or not pairs:
        grads: Sequence[Optional[Tensor]] = [None] * len(wanted)
    else:
        grads = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                    allow_unused=True)
    k = 0
    grad_x = None
    if x_in is not None:
        grad_x, k = grads[0], 1
    grad_ctx = None
    if want_ctx:
        grad_ctx, k = grads[k], k + 1
    param_grads: List[Optional[Tensor]] = [None] * len(params)
    for i, g in zip(p_slots, grads[k:]):
        param_grads[i] = g
    return grad_x, grad_ctx, tuple(param_grads)


class _RngSnapshot:
    """The global CPU (and, for a CUDA tensor, that device's) RNG state at one moment."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda_device = device if device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(device) if self.cuda_device is not None else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda_device is not None:
            torch.cuda.set_rng_state(self.cuda, self.cuda_device)

    def fork(self):
        """Context manager: run the body from this state, then put the current state back."""
        devices = [self.cuda_device] if self.cuda_device is not None else []
        return torch.random.fork_rng(devices=devices, enabled=True)


def generic_reverse_step(layer: nn.Module, y: Tensor, grad_y: Tensor,
                         grad_logdet: Optional[Tensor], context: Optional[Tensor]
                         ) -> ReverseStepResult:
    """``reverse_step`` for any layer with ``forward``/``inverse``: rebuild ``x = inverse(y)``
    without autograd, then re-run ``forward(x)`` under ``torch.enable_grad`` and take
    ``torch.autograd.grad`` of ``(y, logdet)`` with respect to ``x``, the context and the
    layer's parameters.  Costs two forward passes of the layer (a specialised ``reverse_step``
    usually needs one).  With dropout, both passes start from the same RNG state.
    """
    snapshot = _RngSnapshot(y.device) if has_dropout(layer) else None
    with torch.no_grad():
        x, _ = layer.inverse(y, context)
    if snapshot is not None:
        snapshot.restore()
    params = tuple(layer.parameters())
    with torch.enable_grad():
        x_in = x.detach().requires_grad_()
        y_re, logdet_re = layer(x_in, context)
    outs, gouts = [y_re], [grad_y]
    if grad_logdet is not None:
        outs.append(logdet_re)
        gouts.append(grad_logdet.to(logdet_re.dtype))
    grad_x, grad_ctx, param_grads = grads_for(outs, gouts, x_in, context, params)
    if grad_x is None:
        grad_x = torch.zeros_like(x)
    return x.detach(), grad_x, grad_ctx, param_grads


class InvertibleModule(nn.Module):
    """Base class of the invertible layers (see the module docstring for the protocol).

    Subclasses implement ``forward(x, context=None) -> (y, logdet)`` and
    ``inverse(y, context=None) -> (x, logdet)``; ``reverse_step`` defaults to
    :func:`generic_reverse_step`.
    """

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, context: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def reverse_step(self, y: Tensor, grad_y: Tensor, grad_logdet: Optional[Tensor] = None,
                     context: Optional[Tensor] = None) -> ReverseStepResult:
        """From the output ``y [B, dim]`` and ``grad_y [B, dim]``, ``grad_logdet [B]`` (or None):
        ``(x [B, dim], grad_x [B, dim], grad_context or None, param_grads)``."""
        return generic_reverse_step(self, y, grad_y, grad_logdet, context)
