"""A velocity model driven by diffusers' own flow-matching schedulers.

Conventions (checked by ``tests/compare/test_baseline_conventions.py`` on Gaussian data with the
exact velocity):

* ours (``docs/design.md`` section 1): ``x_t = (1-t) x + t e``, ``t`` from 1 (noise) to 0
  (data), velocity ``v(x_t, t) = E[e - x | x_t]``;
* diffusers' flow sigmas: ``x_sigma = (1 - sigma) x0 + sigma * noise``, ``sigma`` from 1 to
  0, model output ``noise - x0`` (``FlowMatchEulerDiscreteScheduler.step``:
  ``x <- x + (sigma_next - sigma) * output``; ``prediction_type="flow_prediction"``:
  ``x0 = x - sigma * output``).

So ``sigma = t`` and the scheduler's model output is our velocity, sign unchanged.  The model
is evaluated at the scheduler's exact ``sigmas[i]`` for its ``timesteps[i]``: the multistep
schedulers round ``timesteps`` (``sigma * 1000``) to integers, which would move ``t`` by up to
``1e-3``.  Every scheduler uses ``shift`` for its flow-sigma shift ``t = shift*r / (1 +
(shift-1)*r)``, the same formula as ours, so ``shift`` should be the model's own.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from diffusers import (DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
                       FlowMatchHeunDiscreteScheduler, UniPCMultistepScheduler)
from torch import Tensor

__all__ = ["SCHEDULERS", "make_scheduler", "set_steps", "sample_with_scheduler",
           "CountingVelocity", "fm_velocity", "VelocityFn"]

# v(x [B, *shape], t [B], t_next [B]) -> [B, *shape]; t_next < t is where the step goes.
VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def _euler(shift: float):
    return FlowMatchEulerDiscreteScheduler(shift=shift)


def _heun(shift: float):
    return FlowMatchHeunDiscreteScheduler(shift=shift)


def _dpm(shift: float):
    # diffusers' flow-model settings (Sana's scheduler config): DPM-Solver++ of order 2 on
    # flow sigmas, final sigma 0, first order at the last steps of short schedules
    return DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
        final_sigmas_type="zero", lower_order_final=True)


def _unipc(shift: float):
    # diffusers' flow-model settings (Wan's scheduler config): UniPC bh2 of order 2 on flow
    # sigmas, data prediction, corrector on every step, final sigma 0
    return UniPCMultistepScheduler(
        solver_order=2, solver_type="bh2", predict_x0=True, prediction_type="flow_prediction",
        use_flow_sigmas=True, flow_shift=shift, final_sigmas_type="zero",
        lower_order_final=True)


# name -> factory(shift) of a freshly configured scheduler
SCHEDULERS: Dict[str, Callable[[float], object]] = {
    "flow_euler": _euler,
    "flow_heun": _heun,
    "dpmpp_2m": _dpm,
    "unipc": _unipc,
}


def make_scheduler(name: str, *, shift: float = 1.0):
    """A new diffusers scheduler ``name`` (one of :data:`SCHEDULERS`) with flow shift
    ``shift``."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler_name must be one of {sorted(SCHEDULERS)}, got {name!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return SCHEDULERS[name](float(shift))


class CountingVelocity:
    """Wraps a :data:`VelocityFn` and counts its calls in ``nfe`` (one call = one batched
    function evaluation)."""

    def __init__(self, fn: VelocityFn):
        self.fn, self.nfe = fn, 0

    def __call__(self, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        self.nfe += 1
        return self.fn(x, t, t_next)


def set_steps(sched, steps: int, device=None) -> None:
    """``sched.set_timesteps`` for ``steps`` steps as diffusers' flow pipelines call it: the
    Euler scheduler gets ``sigmas = 1, 1 - 1/steps, ..., 1/steps`` (shifted by the scheduler;
    the pipelines of Flux, AuraFlow, Chroma, ... pass these), else its own default spacing
    ``linspace(1, 1/1000, steps)`` would make the last of ``steps`` steps a tiny one from
    ``~1e-3`` to 0.  Heun's ``set_timesteps`` takes no sigmas: it keeps that spacing, i.e.
    ``steps - 1`` Heun steps and a last Euler step from ``~1e-3`` to 0."""
    if isinstance(sched, FlowMatchEulerDiscreteScheduler):
        sched.set_timesteps(sigmas=[1 - k / steps for k in range(steps)], device=device)
    else:
        sched.set_timesteps(steps, device=device)


def _next_lower(sigmas: Tensor) -> Tensor:
    """For each ``sigmas[i]``, the largest schedule value strictly below it (0 if none): the
    time a step from ``sigmas[i]`` goes to (Heun repeats each interior sigma)."""
    s = sigmas.double()
    below = torch.where(s.unsqueeze(0) < s.unsqueeze(1), s.unsqueeze(0), torch.zeros(()))
    return below.max(dim=1).values.to(sigmas.dtype)


@torch.no_grad()
def sample_with_scheduler(velocity_fn: VelocityFn, scheduler_name: str, steps: int,
                          shape: Sequence[int], generator: Optional[torch.Generator] = None, *,
                          shift: float = 1.0, device=None, dtype=torch.float32,
                          noise: Optional[Tensor] = None) -> Tuple[Tensor, int]:
    """``(x [*shape], nfe)``: samples of the ODE ``dx/dt = v(x, t)`` from ``t = 1`` to 0 by
    the diffusers scheduler ``scheduler_name`` with ``steps`` inference steps.

    ``shape`` is ``[B, *data_shape]``; the start ``x_1`` is ``noise`` if given, else
    ``N(0, I)`` drawn from ``generator`` (times the scheduler's ``init_noise_sigma`` where it
    has one: 1 for these).  ``velocity_fn(x, t [B], t_next [B])`` is called at the
    scheduler's sigmas (module docstring; steps placed by :func:`set_steps`); ``nfe`` counts
    its calls (Heun: ``2*steps - 1``).
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be [B, *data_shape] with positive sizes, got {list(shape)}")
    sched = make_scheduler(scheduler_name, shift=shift)
    set_steps(sched, int(steps), device)
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {list(shape)}, got {list(noise.shape)}")
    # the flow-match schedulers define neither (their pipelines start at, and feed, x as is)
    x = noise.to(device=device, dtype=dtype) * getattr(sched, "init_noise_sigma", 1.0)
    scale_input = getattr(sched, "scale_model_input", lambda x_, _: x_)
    sigmas = sched.sigmas.detach().cpu().double()
    nexts = _next_lower(sigmas)
    model = CountingVelocity(velocity_fn)
    B = shape[0]
    for i, timestep in enumerate(sched.timesteps):
        t = torch.full((B,), float(sigmas[i]), device=x.device, dtype=dtype)
        t_next = torch.full((B,), float(nexts[i]), device=x.device, dtype=dtype)
        v = model(scale_input(x, timestep), t, t_next)
        x = sched.step(v, timestep, x, return_dict=False)[0]
    return x, model.nfe


def fm_velocity(model, y: Optional[Tensor] = None, guidance: float = 0.0) -> VelocityFn:
    """The :data:`VelocityFn` of a :class:`~ntm_engine.models.FlowMatchingModel` (labels
    ``y [B]`` or None; the model's own time convention is ours, see module docstring).
    ``guidance`` ``w != 0`` (needs labels): ``(1+w) v(.|y) - w v(.|null)`` in one batch of
    ``2B``, as :meth:`~ntm_engine.models.FlowMatchingModel.sample` (one NFE per call)."""
    if guidance == 0:
        return lambda x, t, t_next: model.velocity(x, t, t_next, y)
    if y is None:
        raise ValueError("guidance needs labels y (and a class-conditional model), got y=None")
    y2 = torch.cat([y, torch.full_like(y, model.num_classes)])

    def guided(x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        B = x.shape[0]
        v = model.velocity(torch.cat([x, x]), t.repeat(2), t_next.repeat(2), y2)
        return (1 + guidance) * v[:B] - guidance * v[B:]
    return guided
