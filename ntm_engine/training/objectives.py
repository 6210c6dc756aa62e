"""Training objectives as objects: each turns a :class:`Batch` into a loss and its metrics.

``loss(batch) -> (loss [B], metrics)``: per-sample losses (the loop minimises their mean) and
named metrics -- per-sample tensors ``[B]`` are loss terms (averaged into the log), plain
floats are per-step values (e.g. a regulariser weight).  ``loss_parts(batch, parts)`` yields
the same in pieces of at most ``B / parts`` samples per pass, for gradient accumulation: the
NTM objectives draw every random number for the whole batch first, so the pieces' sum is the
one-pass loss (:func:`~ntm_engine.models.loss.micro_batches`); flow matching draws per piece
(the same estimator, other draws).  ``docs/design.md`` section 1 gives the
maths of each.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..condition import labels_of
from ..models.embedding import drop_condition
from ..models.loss import (anchor_terms, anchored_trajectory_nll, loss_from_levels,
                           micro_batches, training_groups)

Metrics = Dict[str, Union[Tensor, float]]
Parts = Iterator[Tuple[Tensor, Metrics]]


@dataclass
class Batch:
    """Data ``x [B, *shape]``, labels ``y [B]`` or None, the generator of the iteration's
    model noise, and where the run is (``step``, 0-based, and training seconds)."""
    x: Tensor
    y: Optional[Tensor]
    generator: torch.Generator
    step: int = 0
    elapsed_s: float = 0.0


class NTMLikelihood:
    """The trajectory negative log-likelihood of an NTM (nats per sample), end to end or its
    pair-wise estimate (``trajectory_loss``, :meth:`~ntm_engine.models.NTM.trajectory_nll`)."""

    def __init__(self, model: nn.Module, *, trajectory_loss: str = "end_to_end"):
        self.model, self.trajectory_loss = model, trajectory_loss
        self.forward: nn.Module = model   # what runs the forward (a DDP wrapper of the model)

    def loss(self, batch: Batch) -> Tuple[Tensor, Metrics]:
        nll = self.forward(batch.x, batch.y, generator=batch.generator,
                           trajectory_loss=self.trajectory_loss)
        return nll, {"nll": nll}

    def loss_parts(self, batch: Batch, parts: int) -> Parts:
        g = batch.generator
        for X, t, y, w in micro_batches(training_groups(self.model, batch.x, batch.y, g), parts):
            nll = w * loss_from_levels(self.model, X, self.model.predict_levels(X, t, y),
                                       trajectory_loss=self.trajectory_loss, generator=g)
            yield nll, {"nll": nll}


class FlowMatching:
    """The flow-matching loss of a :class:`~ntm_engine.models.FlowMatchingModel`."""

    def __init__(self, model: nn.Module):
        self.model = model

    def loss(self, batch: Batch) -> Tuple[Tensor, Metrics]:
        fm = self.model.loss(batch.x, batch.y, generator=batch.generator)
        return fm, {"fm_loss": fm}

    def loss_parts(self, batch: Batch, parts: int) -> Parts:
        rows = -(-batch.x.shape[0] // parts)
        for start in range(0, batch.x.shape[0], rows):
            r = slice(start, start + rows)
            yield self.loss(Batch(batch.x[r], None if batch.y is None else batch.y[r],
                                  batch.generator, batch.step, batch.elapsed_s))


class FMInitRegularised:
    """The NTM likelihood plus ``w |mu - mu_FM|^2`` against the frozen flow-matching
    predictor ``reference``; ``weight(step, elapsed_s)`` gives ``w``."""

    def __init__(self, model: nn.Module, reference: nn.Module,
                 weight: Callable[[int, float], float], *, trajectory_loss: str = "end_to_end"):
        self.model, self.reference, self.weight = model, reference, weight
        self.trajectory_loss = trajectory_loss

    def loss(self, batch: Batch) -> Tuple[Tensor, Metrics]:
        w = self.weight(batch.step, batch.elapsed_s)
        nll, reg = anchored_trajectory_nll(self.model, self.reference, batch.x, batch.y,
                                           batch.generator, trajectory_loss=self.trajectory_loss)
        return nll + w * reg, {"nll": nll, "fm_reg": reg, "fm_reg_weight": w}

    def loss_parts(self, batch: Batch, parts: int) -> Parts:
        w, g = self.weight(batch.step, batch.elapsed_s), batch.generator
        for X, t, y, gw in micro_batches(training_groups(self.model, batch.x, batch.y, g), parts):
            levels = self.model.predict_levels(X, t, y)
            nll = gw * loss_from_levels(self.model, X, levels,
                                        trajectory_loss=self.trajectory_loss, generator=g)
            reg = gw * anchor_terms(self.model, self.reference, X, t, y, levels)
            yield nll + w * reg, {"nll": nll, "fm_reg": reg, "fm_reg_weight": w}


# ----------------------------------------------------------------------------- distillation

@dataclass
class DistillBatch:
    """One regression batch: input ``u [B, *shape]`` at ``t0 [B]`` with the condition ``y``
    (labels ``[B]``, a :class:`~ntm_engine.condition.Condition` or None; the denoiser reads
    its labels), target ``E[x | X] [B, *shape]``, and the trajectory's level 0 ``x_t0 [B, *shape]``
    (what the transporter inverse of ``u`` gives back), all in the teacher's space (latents:
    normalised, :class:`~ntm_engine.models.normalization.ChannelNorm`)."""
    u: Tensor
    t0: Tensor
    y: Optional[Tensor]
    target: Tensor
    x_t0: Tensor


@torch.no_grad()
def distillation_batch(teacher: nn.Module, x: Tensor, y: Optional[Tensor], t_min: float,
                       generator: Optional[torch.Generator] = None, *,
                       label_dropout: float = 0.0) -> DistillBatch:
    """Inputs and targets for data ``x [B, *shape]`` (condition ``y``: labels ``[B]``, a
    :class:`~ntm_engine.condition.Condition` or None).

    A forward trajectory ``X`` on the teacher's grid with ``t_0 = t_min`` (noise from
    ``generator``); then, for a conditional teacher, the condition dropped (labels to the null
    class, tokens masked) with probability ``label_dropout`` (drawn from ``generator`` after
    the trajectory); the target
    ``teacher.posterior_mean(X, t, y)`` (its own autograd for the score; everything else
    without gradients) and the input ``u_{t_0} = f_T(x_{t_0}; t_0, y)``.
    """
    X, t = teacher.forward_trajectory(x, generator, t_min=t_min)
    y = teacher.resolve_condition(y, x.shape[0], x.device)
    y = drop_condition(y, label_dropout, teacher.num_classes, generator)
    target = teacher.posterior_mean(X, t, y)
    B = x.shape[0]
    u, _ = teacher.transport(X[:, 0].reshape(B, teacher.dim), t[:, 0], y)
    return DistillBatch(u.view_as(x), t[:, 0], y, target, X[:, 0])


class DistillationTarget:
    """Regression of ``denoiser(u, t0, y)`` on the frozen ``teacher``'s Tweedie posterior
    means at ``t_0 = t_min`` (labels dropped with ``label_dropout``).  :meth:`targets` costs a
    teacher forward + backward; :meth:`loss` is the cheap part, run several times per batch."""

    def __init__(self, teacher: nn.Module, denoiser: nn.Module, *, t_min: float,
                 label_dropout: float = 0.0):
        self.teacher, self.denoiser = teacher, denoiser
        self.t_min, self.label_dropout = t_min, label_dropout

    def targets(self, batch: Batch) -> DistillBatch:
        return distillation_batch(self.teacher, batch.x, batch.y, self.t_min, batch.generator,
                                  label_dropout=self.label_dropout)

    def loss(self, batch: DistillBatch) -> Tuple[Tensor, Metrics]:
        """The mean squared error (per element; a scalar) and no further metrics."""
        return (self.denoiser(batch.u, batch.t0, labels_of(batch.y)) - batch.target
                ).pow(2).mean(), {}
