"""Where the NTM's training loss lives (docs/design.md section 1, "Loss", "Several step
counts"): the trajectory losses, the static step-count groups of a batch, the random draws of
a training step, and the loss anchored to a flow-matching reference.

:meth:`NTM.forward <ntm_engine.models.NTM.forward>` is :func:`trajectory_nll`.

**Trajectory losses.**

Inputs: ``x1 [B, D]`` (the last level, ``x_1``) and the outputs of
:meth:`NTM.predict_levels <ntm_engine.models.NTM.predict_levels>`: ``U, mu, log_sigma
[B, T, D]`` and ``logdet [B, T]``.  ``L = prior + sum_k factor_k`` with
``factor_k = -log N(u_{t_k}; mu_k, sig_k^2) - logdet_k`` and ``prior = -log N(x_1; 0, I)``.

* ``"end_to_end"``: ``L`` itself.
* ``"pairwise"``: ``prior + T * factor_k`` with one ``k ~ U{0..T-1}`` per sample, so its
  expectation over ``k`` is ``L``.  (The block-causal predictor still reads every noisier
  level, so the pass costs the same; the gradient flows through one factor per sample.)

**Step-count groups.**

A model trained on ``K`` step counts ``T_0 < ... < T_{K-1}`` runs one teacher-forced pass per
count over a batch of ``B`` samples.  Group ``i`` has the static size
``s_i = B // K + (1 if i < B % K else 0)`` (:func:`group_sizes`, a pure function of ``(B, K)``);
which samples it holds is one random permutation ``perm [B]`` of the batch, group ``i`` taking
positions ``[s_0 + ... + s_{i-1}, ... + s_i)`` of it.  Nothing in a step's shapes depends on a
drawn value, so the step has no ``nonzero``, no ``.item()``, no host sync, and traces as one
graph under ``torch.compile(fullgraph=True)``.

**Same estimator in expectation.**  For a uniform random permutation sample ``j`` lands in
group ``i`` with probability ``s_i / B``.  Group ``i``'s per-sample losses are scaled by
``w_i = B / (K s_i)`` (:func:`group_weights`).  For any per-sample estimate ``L_i(x_j)`` of the
``T_i`` loss with mean ``l_i(x_j)`` (the noise drawn independently of the permutation):

    E[w_{g(j)} L_{g(j)}(x_j)] = sum_i (s_i / B) (B / (K s_i)) l_i(x_j) = (1/K) sum_i l_i(x_j),

the mean of the former scheme, ``T ~ U{T_0..T_{K-1}}`` per sample.  When ``K`` divides ``B``
every ``s_i = B / K`` and ``w_i = 1`` exactly (no multiply: each sample's ``T`` is uniform and
its value is the plain loss of its trajectory).  ``B < K`` leaves a count without samples,
which no weight can make up for: ValueError naming the batch size and the step counts.

**Unequal shares.**  A model made with ``step_shares`` (probabilities ``p_i``, e.g. half the
samples at the smallest ``T``, the step count few-step sampling uses) gets sizes
``s_i ~ B p_i`` (:func:`group_sizes`) and weights ``w_i = B p_i / s_i``, so the same
computation gives ``E = sum_i p_i l_i(x_j)``: the loss of ``T ~ p`` per sample.  The cost of a
step follows the sizes (group ``i``'s predictor pass reads ``s_i`` sequences of ``T_i``
levels), so shares that favour small ``T`` also make the iteration cheaper.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import ops
from .embedding import drop_condition

if TYPE_CHECKING:   # the NTM imports this module
    from .ntm import NTM

__all__ = ["TRAJECTORY_LOSSES", "prior_nll", "end_to_end_nll", "pairwise_nll",
           "loss_of_kind", "Group", "StepGroups", "group_sizes", "group_weights",
           "draw_permutation", "training_trajectory", "training_groups", "loss_from_levels",
           "trajectory_nll", "anchor_terms", "anchored_trajectory_nll", "micro_batches"]

TRAJECTORY_LOSSES = ("end_to_end", "pairwise")
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

Group = Tuple[Optional[Tensor], Tensor, Tensor, Optional[Tensor]]

# ----------------------------------------------------------------------------- trajectory losses


def prior_nll(x1: Tensor) -> Tensor:
    """``-log N(x_1; 0, I) [B]`` of ``x1 [B, D]``."""
    return 0.5 * x1.pow(2).sum(dim=1) + x1.shape[1] * HALF_LOG_2PI


def end_to_end_nll(x1: Tensor, U: Tensor, logdet: Tensor, mu: Tensor, log_sigma: Tensor
                   ) -> Tensor:
    """``L [B]``: all ``T`` factors and the prior."""
    B, T, D = U.shape
    nll = ops.gaussian_nll(U.reshape(B, T * D), mu.reshape(B, T * D),
                           log_sigma.reshape(B, T * D))
    return nll - logdet.sum(dim=1) + T * D * HALF_LOG_2PI + prior_nll(x1)


def pairwise_nll(x1: Tensor, U: Tensor, logdet: Tensor, mu: Tensor, log_sigma: Tensor,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """``prior + T * factor_k [B]``, ``k [B]`` uniform on ``0..T-1`` (one draw from
    ``generator``)."""
    B, T, D = U.shape
    k = torch.randint(T, (B, 1), generator=generator, device=U.device)
    rows = k.view(B, 1, 1).expand(B, 1, D)
    factor = ops.gaussian_nll(*(v.gather(1, rows).view(B, D) for v in (U, mu, log_sigma)))
    factor = factor - logdet.gather(1, k).view(B) + D * HALF_LOG_2PI
    return T * factor + prior_nll(x1)


def loss_of_kind(kind: str, x1: Tensor, levels: Tuple[Tensor, Tensor, Tensor, Tensor],
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """The loss ``[B]`` of ``kind`` (one of :data:`TRAJECTORY_LOSSES`) from ``x1`` and
    ``levels = (U, logdet, mu, log_sigma)``."""
    if kind == "end_to_end":
        return end_to_end_nll(x1, *levels)
    if kind == "pairwise":
        return pairwise_nll(x1, *levels, generator=generator)
    raise ValueError(f"trajectory_loss must be one of {TRAJECTORY_LOSSES}, got {kind!r}")


# ----------------------------------------------------------------------------- step-count groups


def group_sizes(batch: int, counts: Sequence[int],
                shares: Optional[Sequence[float]] = None) -> Tuple[int, ...]:
    """The static sizes ``(s_0, ..., s_{K-1})`` (summing to ``batch``) of the groups of the
    ``K = len(counts)`` step counts ``counts``.  Equal ``shares`` (None): near-equal, the
    first ``batch % K`` one larger.  ``shares`` (probabilities, one per count,
    :func:`~.schedule.step_shares`): ``s_i`` near ``batch * p_i`` -- at least 1 each, then
    the rest to the largest remainders (the first on ties).  ValueError when ``batch < K``
    (a count would get no sample)."""
    K = len(counts)
    if batch < K:
        raise ValueError(
            f"steps: a batch of {batch} sample(s) cannot give each of the {K} trained step "
            f"counts {tuple(counts)} its own group; the batch (--batch-size, per process) "
            f"must hold at least {K} samples, or train on fewer step counts (--steps)")
    if shares is None:
        q, r = divmod(batch, K)
        return tuple(q + (i < r) for i in range(K))
    ideal = [batch * p for p in shares]
    sizes = [max(1, math.floor(v)) for v in ideal]
    while sum(sizes) > batch:       # the minimum of 1 took samples from the large groups
        i = max((i for i in range(K) if sizes[i] > 1), key=lambda i: sizes[i] - ideal[i])
        sizes[i] -= 1
    while sum(sizes) < batch:
        i = max(range(K), key=lambda i: (ideal[i] - sizes[i], -i))
        sizes[i] += 1
    return tuple(sizes)


def group_weights(sizes: Sequence[int],
                  shares: Optional[Sequence[float]] = None) -> Tuple[float, ...]:
    """``w_i = B p_i / s_i`` for group sizes ``sizes`` (``B = sum``) and the step counts'
    probabilities ``shares`` (None: ``p_i = 1 / K``): scaling group ``i``'s losses by it
    makes every sample's expected loss the ``p``-mixture over the counts (module docstring).
    Exactly 1.0 where ``s_i = B p_i``."""
    B, K = sum(sizes), len(sizes)
    if shares is None:
        return tuple(1.0 if K * s == B else B / (K * s) for s in sizes)
    return tuple(1.0 if B * p == s else B * p / s for s, p in zip(sizes, shares))


def draw_permutation(batch: int, generator: Optional[torch.Generator], device) -> Tensor:
    """The permutation ``[batch]`` (long, on ``device``) that deals samples to the groups, one
    draw from ``generator``."""
    return torch.randperm(batch, generator=generator, device=device)


class StepGroups:
    """The groups of one training batch, ``(idx [s_i] or None = all, X [s_i, T_i+1, ...],
    t [s_i, T_i+1], y [s_i] or None)`` in increasing ``T``, and how to put per-group values
    back in the batch's order (:meth:`combine`).

    ``perm [B]`` (None: one group of the whole batch, in order) and ``weights`` (one per
    group, :func:`group_weights`) come from the same draw as the groups."""

    def __init__(self, groups: Sequence[Group], perm: Optional[Tensor] = None,
                 weights: Optional[Sequence[float]] = None):
        self.groups: List[Group] = list(groups)
        self.perm = perm
        self.weights = tuple(weights) if weights is not None else (1.0,) * len(self.groups)
        if perm is None and len(self.groups) != 1:
            raise ValueError(f"StepGroups: without perm there must be one group, got "
                             f"{len(self.groups)}")
        if len(self.weights) != len(self.groups):
            raise ValueError(f"StepGroups: weights must have one entry per group "
                             f"({len(self.groups)}), got {len(self.weights)}")

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i):
        return self.groups[i]

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def combine(self, values: Sequence[Tensor]) -> Tensor:
        """Per-sample values ``[B]`` in the batch's order from one ``[s_i]`` tensor per group
        (in the groups' order), group ``i``'s scaled by ``weights[i]`` (module docstring)."""
        if len(values) != len(self.groups):
            raise ValueError(f"StepGroups.combine: values must have one tensor per group "
                             f"({len(self.groups)}), got {len(values)}")
        if self.perm is None:
            return values[0]
        flat = torch.cat([v if w == 1.0 else v * w for v, w in zip(values, self.weights)])
        return flat.new_empty(flat.shape).index_put((self.perm,), flat)


# ----------------------------------------------------------------------------- a training step
def dropped_labels(model: "NTM", y, batch: int, device,
                   generator: Optional[torch.Generator]):
    """The condition ``y`` (labels as ``[batch]`` or None, or a
    :class:`~ntm_engine.condition.Condition`), made unconditional per row with probability
    ``model.label_dropout`` in training mode (labels to the null class, tokens all masked;
    one draw per row from ``generator``, :func:`~.embedding.drop_condition`)."""
    y = model.resolve_condition(y, batch, device)
    if model.training:
        y = drop_condition(y, model.label_dropout, model.num_classes, generator)
    return y


def training_trajectory(model: "NTM", x: Tensor, y=None,
                        generator: Optional[torch.Generator] = None
                        ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """The random draws of a one-step-count training step, in order: ``(X [B, T+1, ...],
    t [B, T+1], y [B] or None)``, a forward trajectory of ``x`` and the labels after label
    dropout (training mode only)."""
    X, t = model.forward_trajectory(x, generator)
    return X, t, dropped_labels(model, y, x.shape[0], x.device, generator)


def training_groups(model: "NTM", x: Tensor, y=None,
                    generator: Optional[torch.Generator] = None) -> StepGroups:
    """The random draws of :func:`trajectory_nll` as groups of one step count each
    (:class:`StepGroups`).  One step count: :func:`training_trajectory`.  Several: first one
    permutation of the batch that deals it into groups of static, near-equal sizes (module
    docstring; ValueError naming the batch size and the counts if ``B`` < the number of
    counts), then one trajectory per group (increasing ``T``), then label dropout."""
    if not model.multi_steps:
        return StepGroups([(None, *training_trajectory(model, x, y, generator))])
    B = x.shape[0]
    sizes = group_sizes(B, model.trained_steps, model.step_shares)
    perm = draw_permutation(B, generator, x.device)
    groups = []
    for idx, T in zip(perm.split(sizes), model.trained_steps):
        groups.append((idx, *model.forward_trajectory(x[idx], generator, steps=T)))
    y = dropped_labels(model, y, B, x.device, generator)
    return StepGroups([(idx, X, t, None if y is None else y[idx]) for idx, X, t in groups],
                      perm, group_weights(sizes, model.step_shares))


def loss_from_levels(model: "NTM", X: Tensor, levels: Tuple[Tensor, Tensor, Tensor, Tensor], *,
                     trajectory_loss: str = "end_to_end",
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """The training loss ``[B]`` from the outputs of :meth:`NTM.predict_levels` on ``X``:
    ``trajectory_loss`` ``"end_to_end"`` (``L``) or ``"pairwise"`` (one factor per sample,
    drawn from ``generator``, times ``T``; same expectation)."""
    return loss_of_kind(trajectory_loss, model.last_level(X), levels, generator)


def trajectory_nll(model: "NTM", x: Tensor, y=None, generator: Optional[torch.Generator] = None,
                   *, trajectory_loss: str = "end_to_end") -> Tensor:
    """The training loss ``[B]`` (nats): ``-log p(X)`` of a forward trajectory ``X`` drawn
    from data ``x [B, *data_shape]`` (``t_0`` random in training mode, 0 in eval mode).
    Several step counts: each sample's ``T`` from :func:`training_groups`, its value scaled by
    its group's weight (module docstring).  In training mode labels are replaced by the null
    class with probability ``label_dropout`` (drawn after the trajectory).  One transporter call
    for all step counts, one predictor pass per step count (:func:`group_levels`)."""
    groups = training_groups(model, x, y, generator)
    return groups.combine([
        loss_from_levels(model, X, levels, generator=generator, trajectory_loss=trajectory_loss)
        for (_, X, _, _), levels in zip(groups, group_levels(model, groups))])


def group_levels(model: "NTM", groups: Sequence[Group]
                 ) -> List[Tuple[Tensor, Tensor, Tensor, Tensor]]:
    """:meth:`NTM.predict_levels` of each group ``(idx, X, t, y)``, with one transporter call
    over all groups' rows: the transporter maps rows one by one (a step-conditioned one reads
    each row's ``T``), so this is each group's own pass in one call instead of one per step
    count -- fewer, larger operations for a shallow network whose cost is mostly per call.
    The predictor runs once per group (its sequences have the group's length)."""
    if len(groups) < 2:
        return [model.predict_levels(X, t, y) for _, X, t, y in groups]
    rows = [model.transporter_rows(X, t, y) for _, X, t, y in groups]
    labels = None if rows[0][2] is None else torch.cat([r[2] for r in rows])
    extra = {k: torch.cat([r[3][k] for r in rows]) for k in rows[0][3]}
    u, logdet = model.transporter(torch.cat([r[0] for r in rows]),
                                  torch.cat([r[1] for r in rows]), labels, **extra)
    sizes = [r[0].shape[0] for r in rows]
    return [model.predict_levels(X, t, y, transported=part)
            for (_, X, t, y), part in zip(groups, zip(u.split(sizes), logdet.split(sizes)))]


def anchor_terms(model: "NTM", reference: nn.Module, X: Tensor, t: Tensor, y: Optional[Tensor],
                 levels: Tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
    """``|mu - mu_FM|^2 [b]`` summed over slots and dimensions (the paper's Eq. 3.8): ``mu``
    the NTM's predicted means of the teacher-forced pass ``levels`` over ``X``, ``mu_FM`` the
    frozen flow-matching ``reference`` predictor's from the *x-space* levels (slot ``k`` reads
    ``x_{t_{k+1}}``, not the transporter's ``u_{t_{k+1}}``), same times and labels, no
    gradient.  Anchoring ``u``-space means to ``x``-space predictions also keeps the
    transporter near the identity in the mean, the paper's reason for the term."""
    U, _, mu, _ = levels
    B, T, D = U.shape
    tt = t.to(U.dtype)
    x_slots = X.reshape(B, T + 1, D)[:, 1:]
    with torch.no_grad():
        mu_ref, _ = reference(x_slots, tt[:, :T], tt[:, 1:], y,
                              **model.predictor_steps(T, B, U.device))
    return (mu - mu_ref.to(mu.dtype)).pow(2).sum(dim=(1, 2))


def anchored_trajectory_nll(model: "NTM", reference: nn.Module, x: Tensor, y=None,
                            generator: Optional[torch.Generator] = None, *,
                            trajectory_loss: str = "end_to_end") -> Tuple[Tensor, Tensor]:
    """``(nll [B], sq [B])``: :func:`trajectory_nll` (same draws from ``generator``, same
    value) and :func:`anchor_terms` on the same passes; several step counts scale both by
    their groups' weights.  Fine-tuning from a flow-matching model minimises
    ``nll + lambda * sq``."""
    nll, sq = [], []
    groups = training_groups(model, x, y, generator)
    for (_, X, t, y_g), levels in zip(groups, group_levels(model, groups)):
        nll.append(loss_from_levels(model, X, levels, trajectory_loss=trajectory_loss,
                                    generator=generator))
        sq.append(anchor_terms(model, reference, X, t, y_g, levels))
    return groups.combine(nll), groups.combine(sq)


# ----------------------------------------------------------------------------- micro-batches
def micro_batches(groups: StepGroups, parts: int
                  ) -> Iterator[Tuple[Tensor, Tensor, Optional[Tensor], float]]:
    """The passes of a batch's :class:`StepGroups` cut into at most ``parts`` chunks each
    (gradient accumulation): ``(X [b, T+1, ...], t [b, T+1], y [b] or None, weight)``.  The
    draws were made for the whole batch, so each sample's trajectory, labels and weight are
    those of the one-pass step; summing ``weight * loss`` over the chunks and dividing by
    ``B`` gives the one-pass mean (exactly, up to rounding, for the end-to-end loss)."""
    if parts < 1:
        raise ValueError(f"parts (gradient accumulation) must be >= 1, got {parts}")
    for (_, X, t, y), w in zip(groups, groups.weights):
        n = X.shape[0]
        size = -(-n // parts)
        for start in range(0, n, size):
            rows = slice(start, start + size)
            yield X[rows], t[rows], None if y is None else y[rows], w
