"""The optimisation parts every run shares: the learning-rate schedule, AdamW, the EMA of the
weights, and one guarded update (backward, clip, step, EMA; skipped when not finite)."""
from __future__ import annotations

import copy
import math
from typing import Callable, Iterable, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from .sections import OptimConfig


def local(t: Tensor) -> Tensor:
    """This process's shard of a sharded tensor (a ``DTensor`` under ``--parallel fsdp``),
    else ``t`` itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def full(t: Tensor) -> Tensor:
    """The whole value of a sharded tensor (a collective: every rank must call), else
    ``t`` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def budget_progress(opt: OptimConfig, step: int, elapsed_s: float = 0.0, *,
                    start: int = 0) -> float:
    """Fraction in [0, 1] of the budget spent at ``step`` (counted from ``start``): iterations
    (``iters``) or training time (``minutes``), whichever is further along."""
    progress = 0.0
    if opt.iters is not None:
        progress = (step - start) / max(1, opt.iters - start)
    if opt.minutes is not None:
        progress = max(progress, elapsed_s / (60.0 * opt.minutes))
    return min(max(progress, 0.0), 1.0)


def learning_rate(opt: OptimConfig, step: int, elapsed_s: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` iterations, then cosine decay to ``min_lr_ratio * lr`` at
    the end of the budget (``iters``, or ``minutes`` of training time, whichever comes first)."""
    lr, warm = opt.lr, opt.warmup
    if step < warm:
        return lr * (step + 1) / warm
    lo = lr * opt.min_lr_ratio
    progress = budget_progress(opt, step, elapsed_s, start=warm)
    return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(model: nn.Module, opt: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2),
                             weight_decay=opt.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers;
    ``decay`` ramps up as ``min(decay, (1+n)/(warmup+n))`` over the first updates (until then
    the average spans about the last ``n/(warmup-1)`` updates).  A sharded
    model (``--parallel fsdp``) needs an EMA model sharded the same way: the update works on
    the local shards."""

    def __init__(self, model: nn.Module, decay: float, warmup: float = 10.0):
        if not 1 < warmup < math.inf:
            raise ValueError(f"EMA warmup must be a finite number > 1, got {warmup}")
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def of(cls, model: nn.Module, opt: OptimConfig) -> "EMA":
        """The EMA of ``model`` with the decay and ramp of ``opt``."""
        return cls(model, opt.ema_decay, opt.ema_warmup)

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        d = min(self.decay, (1 + num_updates) / (self.warmup + num_updates))
        src = model.state_dict()
        avg, new = [], []
        for k, v in self.model.state_dict().items():
            v, s = local(v), local(src[k])
            if v.dtype.is_floating_point:
                avg.append(v)
                new.append(s)
            else:
                v.copy_(s)
        if avg:
            torch._foreach_lerp_(avg, new, 1 - d)


def guarded_update(loss: Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                   ema: EMA, *, grad_clip, ema_updates: int,
                   loss_finite: Optional[bool] = None,
                   sync_grads: Optional[Callable[[Iterable[Tensor]], None]] = None,
                   backward_done: bool = False) -> Tuple[bool, float]:
    """Backward of the scalar ``loss``, clip (``grad_clip`` None: no clip), AdamW step and EMA
    update -- or, for a non-finite loss or gradient norm, none of it.  Returns
    ``(finite, grad_norm)`` (``nan`` norm when the loss was not finite).  Several processes:
    ``loss_finite`` is the verdict on the loss of all of them, ``sync_grads(params)`` averages
    the gradients after the backward pass (:mod:`.distributed`; None when the backward
    already did, as FSDP's does); the norm of sharded gradients is the global one.
    ``backward_done``: the gradients of ``loss`` are already accumulated (micro-batches)."""
    if not backward_done:
        optimizer.zero_grad(set_to_none=True)
    if not (bool(torch.isfinite(loss)) if loss_finite is None else loss_finite):
        optimizer.zero_grad(set_to_none=True)
        return False, float("nan")
    if not backward_done:
        loss.backward()
    if sync_grads is not None:
        sync_grads(model.parameters())
    params = [p for p in model.parameters() if p.grad is not None]
    clip = grad_clip if grad_clip is not None else float("inf")
    gnorm = float(full(torch.nn.utils.clip_grad_norm_(params, clip)))
    if not math.isfinite(gnorm):
        optimizer.zero_grad(set_to_none=True)
        return False, gnorm
    optimizer.step()
    ema.update(model, ema_updates)
    return True, gnorm
