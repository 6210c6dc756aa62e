"""A training batch grouped by step count, with shapes fixed before any draw (docs/design.md
section 1, "Several step counts").

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
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["Group", "StepGroups", "group_sizes", "group_weights", "draw_permutation"]

Group = Tuple[Optional[Tensor], Tensor, Tensor, Optional[Tensor]]


def group_sizes(batch: int, counts: Sequence[int]) -> Tuple[int, ...]:
    """The static sizes ``(s_0, ..., s_{K-1})`` (summing to ``batch``) of the groups of the
    ``K = len(counts)`` step counts ``counts``: near-equal, the first ``batch % K`` one larger.
    ValueError when ``batch < K`` (a count would get no sample)."""
    K = len(counts)
    if batch < K:
        raise ValueError(
            f"steps: a batch of {batch} sample(s) cannot give each of the {K} trained step "
            f"counts {tuple(counts)} its own group; the batch (--batch-size, per process) "
            f"must hold at least {K} samples, or train on fewer step counts (--steps)")
    q, r = divmod(batch, K)
    return tuple(q + (i < r) for i in range(K))


def group_weights(sizes: Sequence[int]) -> Tuple[float, ...]:
    """``w_i = B / (K s_i)`` for group sizes ``sizes`` (``B = sum``, ``K = len``): scaling
    group ``i``'s losses by it makes every sample's expected loss the mean over the counts
    (module docstring).  Exactly 1.0 each when the sizes are equal."""
    B, K = sum(sizes), len(sizes)
    return tuple(1.0 if K * s == B else B / (K * s) for s in sizes)


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
