"""Sampling an NTM, step by step (docs/design.md section 1, "Sampling", "Guidance",
"Trajectory denoising").

:meth:`NTM.sample <ntm_engine.models.NTM.sample>` is :func:`sample`: a grid
(:func:`sampling_grid`), the reverse steps in ``u``-space (:func:`reverse_levels`), the
decoder (:func:`decode`: transporter inverse, a learned denoiser, or the slow
``"trajectory-denoise"`` path), and optionally the x-space trajectory (:func:`x_levels`).
:meth:`NTM.resample <ntm_engine.models.NTM.resample>` is :func:`resample`: the same reverse
steps continued from the noisier levels of a data point's own forward trajectory.

Guidance combines a conditional and an unconditional Gaussian, which must describe the same
variable.  With a label-free transporter (the default) both live in one ``u``-space and
:func:`~.guidance.guide` combines them directly.  With a label-conditioned transporter
(legacy) each branch runs in its own space: the unconditional branch's predictor reads the
sampled levels mapped through ``x`` into its space, ``f_T(f_T^{-1}(u; t, y); t, null)``, and
its mean is mapped back the same way before :func:`~.guidance.guide` combines it with the
conditional Gaussian in the conditional space (exact when the two spaces differ by a
translation; otherwise the unconditional Gaussian is carried over to first order, keeping its
scale).

Conditions: ``y`` is labels ``[n]``, a :class:`~ntm_engine.condition.Condition` (labels and/or
condition tokens) or None.  Guidance's unconditional branch is :func:`~ntm_engine.condition.
null_condition` of it (null labels, every token masked), run in the same batch; whichever the
condition, the two Gaussians meet in :func:`~.guidance.guide`.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..condition import cat_conditions, labels_of, null_condition
from . import schedule
from .guidance import guide

__all__ = ["SAMPLERS", "sample", "resample", "grid_start", "sampling_grid", "reverse_levels",
           "decode", "x_levels"]

SAMPLERS = ("transporter", "trajectory-denoise")


def sampling_grid(model, n: int, steps: Optional[int], t_min: float, *, device, dtype
                  ) -> Tuple[int, Tensor]:
    """``(T, t [n, T+1])``: the grid of ``steps`` (None: the model's default T) with
    ``t_0 = t_min``; ValueError for an untrained T (models trained on several) or a
    ``t_min`` outside ``[0, t_1)``.  A model trained on one ``T`` samples at others with a
    warning: its likelihood holds at any ``T``, but those reverse steps were never trained."""
    T = model.check_steps(steps)
    if not model.multi_steps and T != model.steps:
        warnings.warn(f"sample: steps={T}, but this model was trained on T = {model.steps} "
                      f"only; its {T}-step samples are untrained (train several counts with "
                      f"--steps, e.g. {model.steps},{2 * model.steps})", stacklevel=5)
    t1 = schedule.first_interior_time(T, model.shift)
    if not 0 <= t_min < t1:
        raise ValueError(f"sample: t_min (the t_0 of the sampling grid) must lie in "
                         f"[0, t_1 = {t1:.4g}) for {T} steps with shift {model.shift:.4g}, "
                         f"got {t_min}")
    return T, model.time_grid(n, T, t_min, device=device, dtype=dtype)


def grid_start(model, t_min: Optional[float], denoiser: Optional[nn.Module],
               sampler: str) -> float:
    """The grid's ``t_0``: ``t_min`` if given; with a denoiser, the ``t_d`` it was distilled at
    (``denoiser.t_min``; a different ``t_min`` is refused: the denoiser never saw inputs
    there); for ``"trajectory-denoise"``, the model's ``t_min_max`` (at ``t_0 = 0`` trajectory
    denoising does nothing); else 0."""
    if denoiser is not None:
        trained = getattr(denoiser, "t_min", None)
        if t_min is None:
            if trained is None:
                raise ValueError("sample: this denoiser does not record the t_d it was "
                                 "distilled at; pass t_min= (the t_0 of its grid)")
            return float(trained)
        if trained is not None and abs(float(t_min) - trained) > 1e-9:
            raise ValueError(f"sample: t_min = {t_min} but the denoiser was distilled at "
                             f"t_d = {trained}; sample with its t_d (leave t_min out)")
        return float(t_min)
    if t_min is not None:
        return float(t_min)
    return float(model.t_min_max) if sampler == "trajectory-denoise" else 0.0


def _to_space(model, u: Tensor, t: Tensor, y_from: Optional[Tensor], y_to: Optional[Tensor],
              steps: int) -> Tensor:
    """``f_T(f_T^{-1}(u; t, y_from); t, y_to)`` for flat rows ``u [R, D]``, ``t [R]`` of
    trajectories of ``steps`` steps."""
    x, _ = model.transport_inverse(u, t, y_from, steps=steps)
    return model.transport(x, t, y_to, steps=steps)[0]


def _slots(levels: List[Optional[Tensor]]) -> Tensor:
    """The predictor's input ``[n, T, D]`` from levels ``[u_{t_0}, ..., u_{t_T}]`` (slot ``j``
    reads level ``j+1``; levels not sampled yet are zero, which causality ignores)."""
    last = levels[-1]
    return torch.stack([torch.zeros_like(last) if v is None else v for v in levels[1:]], dim=1)


def reverse_levels(model, t: Tensor, y: Optional[Tensor], *, temperature: float = 1.0,
                   guidance: float = 0.0, generator: Optional[torch.Generator] = None,
                   use_cache: bool = True, kept: Optional[List[Tensor]] = None) -> List[Tensor]:
    """The sampled levels ``[u_{t_0}, ..., u_{t_T}]`` (each ``[n, D]``; ``u_{t_T} = u_1``) on
    grid ``t [n, T+1]`` with the condition ``y`` (labels ``[n]``, a resolved
    :class:`~ntm_engine.condition.Condition`) or None.  Noise from ``generator``: ``u_1``,
    then one ``z`` per step.  ``use_cache`` keeps the keys/values of finished slots; without
    it every step reruns all slots (unfinished inputs zero, which causality ignores).
    ``kept``: the noisiest levels ``[u_{t_j}, ..., u_{t_T}]`` (``1 <= j <= T``, each
    ``[n, D]``) taken as given; only the steps below ``t_j`` are sampled, drawing one ``z``
    each (:func:`resample`)."""
    n, T = t.shape[0], t.shape[1] - 1
    if kept is not None and not 1 <= len(kept) <= T:
        raise ValueError(f"reverse_levels: 'kept' must hold 1 to T = {T} levels (the noisiest "
                         f"first kept one at index j >= 1), got {len(kept)}")
    p = next(model.parameters())
    guided = guidance != 0
    if guided and y is None:
        raise ValueError("guidance needs a condition: labels y (a class-conditional NTM) or "
                         "condition tokens cond (an NTM with cond_dim > 0)")
    y_null = null_condition(y, model.num_classes) if guided else None
    own_spaces = guided and model.transporter_sees_labels() and labels_of(y) is not None
    y_run = cat_conditions(y, y_null) if guided else y
    t_run = torch.cat([t, t]) if guided else t
    reps = 2 if guided else 1
    steps_kw = model.predictor_steps(T, reps * n, p.device)

    if kept is None:
        kept = [torch.randn(n, model.dim, generator=generator, device=p.device, dtype=p.dtype)]
    j = T + 1 - len(kept)            # the cleanest kept level
    U = [None] * j + list(kept)
    U_null = [None] * T + [U[T]]     # the unconditional branch's inputs (own space)
    for k in range(j, T):
        U_null[k] = _to_space(model, U[k], t[:, k], y, y_null, T) if own_spaces else U[k]
    cache = None
    for k in range(T - 1, -1, -1):
        if U[k] is not None and not use_cache:   # a kept level: nothing to compute
            continue
        if use_cache:
            u_in = torch.cat([U[k + 1], U_null[k + 1]]) if guided else U[k + 1]
            mu, log_sigma, cache = model.predictor.step(u_in, t_run[:, k], t_run[:, k + 1],
                                                        y_run, cache, **steps_kw)
        else:
            u_in = torch.cat([_slots(U), _slots(U_null)]) if guided else _slots(U)
            mu, log_sigma = model.predictor(u_in, t_run[:, :T], t_run[:, 1:], y_run,
                                            **steps_kw)
            mu, log_sigma = mu[:, k], log_sigma[:, k]
        if U[k] is not None:   # a kept level: its step only filled the cache
            continue
        if guided:
            mu_u = mu[n:]
            if own_spaces:
                mu_u = _to_space(model, mu_u, t[:, k], y_null, y, T)
            mu, log_sigma = guide(mu[:n], log_sigma[:n], mu_u, log_sigma[n:], guidance)
        z = torch.randn(n, model.dim, generator=generator, device=p.device, dtype=p.dtype)
        U[k] = mu + temperature * torch.exp(log_sigma) * z
        U_null[k] = _to_space(model, U[k], t[:, k], y, y_null, T) if own_spaces else U[k]
    return U


def decode(model, u0: Tensor, t0: Tensor, y: Optional[Tensor],
           denoiser: Optional[nn.Module] = None, *, steps: Optional[int] = None) -> Tensor:
    """``x [n, *data_shape]`` from the cleanest level ``u0 [n, D]`` at ``t0 [n]`` of a
    trajectory of ``steps`` steps: the transporter inverse, or ``denoiser(u0 [n,
    *data_shape], t0, labels)`` (the denoiser reads the condition's labels only)."""
    n = u0.shape[0]
    if denoiser is None:
        x, _ = model.transport_inverse(u0, t0, y, steps=steps)
        return x.view(n, *model.data_shape)
    x = denoiser(u0.view(n, *model.data_shape), t0, labels_of(y))
    if tuple(x.shape) != (n, *model.data_shape):
        raise ValueError(f"sample: the denoiser returned shape {list(x.shape)}, expected "
                         f"{[n, *model.data_shape]}")
    return x


@torch.no_grad()
def resample(model, x: Tensor, y=None, steps: Optional[int] = None, *, keep: int = 1,
             temperature: float = 1.0, guidance: float = 0.0,
             generator: Optional[torch.Generator] = None, cond: Optional[Tensor] = None,
             cond_mask: Optional[Tensor] = None) -> Tensor:
    """:meth:`NTM.resample <ntm_engine.models.NTM.resample>` (arguments documented there)."""
    p = next(model.parameters())
    if not isinstance(x, Tensor):
        raise TypeError(f"resample: argument 'x' must be a tensor [B, "
                        f"{', '.join(map(str, model.data_shape))}], got {type(x).__name__}")
    T, _ = sampling_grid(model, 1, steps, 0.0, device=p.device, dtype=p.dtype)
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= T:
        raise ValueError(f"resample: argument 'keep' must be an integer level in [1, T = {T}] "
                         f"(1: only the last step is redrawn; T: fresh samples), got {keep!r}")
    X, t = model.forward_trajectory(x.to(p.dtype), generator, t_min=0.0, steps=T)
    n = X.shape[0]
    y = model.resolve_condition(y, n, p.device, cond, cond_mask)
    X, L = X.reshape(n, T + 1, model.dim), T - keep
    kept = []
    if L:   # levels keep..T-1 in one transporter call
        u, _ = model.transport(*level_rows(X[:, keep:T], t[:, keep:T], y), steps=T)
        kept = list(u.view(n, L, model.dim).unbind(1))
    U = reverse_levels(model, t, y, temperature=temperature, guidance=guidance,
                       generator=generator, kept=kept + [X[:, T]])
    return model.norm.to_data(decode(model, U[0], t[:, 0], y, steps=T))


def x_levels(model, U: List[Tensor], t: Tensor, y: Optional[Tensor]) -> Tensor:
    """The x-space trajectory ``X [n, T+1, D]``: ``f_T^{-1}`` of levels ``0..T-1`` of ``U``
    (from :func:`reverse_levels`) and ``u_1``."""
    n, T = t.shape[0], t.shape[1] - 1
    Xs, _ = model.transport_inverse(*level_rows(torch.stack(U[:T], dim=1), t[:, :T], y),
                                    steps=T)
    return torch.cat([Xs.view(n, T, model.dim), U[T].unsqueeze(1)], dim=1)


def level_rows(levels: Tensor, t: Tensor, y: Optional[Tensor]
               ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Levels ``[n, L, D]`` at times ``t [n, L]`` with the condition ``y`` (``n`` rows) as the
    transporter's rows ``(x [n*L, D], t [n*L], labels [n*L] or None)`` in (sample, level)
    order: one transporter call for all of them."""
    n, L = levels.shape[:2]
    labels = labels_of(y)
    return (levels.reshape(n * L, levels.shape[2]), t.reshape(n * L),
            None if labels is None else labels.repeat_interleave(L))


@torch.no_grad()
def sample(model, n: int, y=None, steps: Optional[int] = None, *, temperature: float = 1.0,
           guidance: float = 0.0, generator: Optional[torch.Generator] = None,
           return_trajectory: bool = False, use_cache: bool = True,
           t_min: Optional[float] = None,
           denoiser: Optional[nn.Module] = None, sampler: str = "transporter",
           cond: Optional[Tensor] = None, cond_mask: Optional[Tensor] = None
           ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """:meth:`NTM.sample <ntm_engine.models.NTM.sample>` (arguments documented there)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler == "trajectory-denoise" and denoiser is not None:
        raise ValueError("sample: sampler='trajectory-denoise' replaces the denoiser; "
                         "give one of them, not both")
    p = next(model.parameters())
    t_min = grid_start(model, t_min, denoiser, sampler)
    T, t = sampling_grid(model, n, steps, t_min, device=p.device, dtype=p.dtype)
    model.check_denoiser(denoiser)
    y = model.resolve_condition(y, n, p.device, cond, cond_mask)
    U = reverse_levels(model, t, y, temperature=temperature, guidance=guidance,
                       generator=generator, use_cache=use_cache)
    X = None
    if sampler == "trajectory-denoise":
        X = x_levels(model, U, t, y)
        X_shaped = X.view(n, T + 1, *model.data_shape)
        x = model.posterior_mean(X_shaped, t, y).detach()
    else:
        x = decode(model, U[0], t[:, 0], y, denoiser, steps=T)
    if not return_trajectory:
        return model.norm.to_data(x)
    if X is None:
        X = x_levels(model, U, t, y)
    X = X.clone()
    X[:, 0] = x.reshape(n, model.dim)
    return model.norm.to_data(x), X.view(n, T + 1, *model.data_shape)
