"""Time grid and the Markov forward process of an NTM (docs/design.md section 1).

All functions work per sample: a grid is ``t [B, T+1]`` with ``0 <= t_0 < ... < t_T = 1``.
Data here is flat, ``[B, D]``; the model reshapes.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "check_shape_and_steps",
    "step_counts",
    "step_shares",
    "auto_shift",
    "resolve_shift",
    "shifted",
    "time_grid",
    "first_interior_time",
    "forward_coefficients",
    "forward_trajectory",
    "forward_entropy",
    "forward_log_prob",
    "marginal_variance",
    "gaussian_reverse",
    "posterior_coefficients",
    "flow_matching_reverse",
    "level_covariance",
]


def check_shape_and_steps(data_shape: Sequence[int], steps: int) -> Tuple[int, ...]:
    """``data_shape`` as a tuple, after checking that it is ``[D]`` or ``[C, H, W]`` and that
    the trajectory has ``steps >= 1`` steps (ValueError naming the argument otherwise)."""
    data_shape = tuple(int(s) for s in data_shape)
    if len(data_shape) not in (1, 3):
        raise ValueError(f"data_shape must be [D] or [C, H, W], got {list(data_shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return data_shape


def step_counts(steps: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    """The trained step counts as a sorted tuple of distinct ints ``>= 1`` from an int or a
    sequence of distinct ints (ValueError naming ``steps`` otherwise).  The one check of a
    step-count option: the model, the training config and ``--steps`` all use it."""
    if isinstance(steps, (int, float)) and not isinstance(steps, bool):
        if int(steps) != steps:
            raise ValueError(f"steps must be an int or a sequence of ints, got {steps!r}")
        counts = (int(steps),)
    else:
        try:
            counts = tuple(int(s) for s in steps)
        except (TypeError, ValueError):
            raise ValueError(f"steps must be an int or a sequence of ints, got {steps!r}")
        if not counts or any(c != s for c, s in zip(counts, steps)):
            raise ValueError(f"steps must be an int or a non-empty sequence of ints, "
                             f"got {steps!r}")
    if min(counts) < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    if len(set(counts)) != len(counts):
        raise ValueError(f"steps must be distinct step counts, got {steps!r}")
    return tuple(sorted(counts))


def step_shares(shares: Optional[Sequence[float]], counts: Sequence[int]
                ) -> Optional[Tuple[float, ...]]:
    """The training mixture over the step counts ``counts`` (sorted, :func:`step_counts`) as
    probabilities summing to 1, one per count in increasing ``T``, from positive finite
    ``shares`` of any scale (``(2, 1, 1)``: half the samples at the smallest ``T``); ``None``
    stays None (equal shares).  ValueError naming ``step_shares`` otherwise."""
    if shares is None:
        return None
    try:
        vals = tuple(float(s) for s in shares)
    except (TypeError, ValueError):
        raise ValueError(f"step_shares must be a sequence of numbers, one per trained step "
                         f"count {tuple(counts)}, got {shares!r}")
    if len(vals) != len(counts) or not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"step_shares must hold {len(counts)} positive finite numbers, one "
                         f"per trained step count {tuple(counts)} in increasing T, got "
                         f"{list(shares)}")
    total = sum(vals)
    return tuple(v / total for v in vals)


def auto_shift(tokens: int) -> float:
    """The paper's time shift from the token count ``L`` of one level (SD3-style):
    ``log shift = 0.5 + 0.65 (L - 256) / (4096 - 256)``."""
    if tokens < 1:
        raise ValueError(f"auto_shift: the token count must be >= 1, got {tokens}")
    return math.exp(0.5 + 0.65 * (tokens - 256) / (4096 - 256))


def resolve_shift(shift: Union[None, str, float], tokens: int) -> float:
    """The numeric shift: ``"auto"`` -> :func:`auto_shift` of ``tokens``; None -> 1 (no
    shift); a number ``> 0`` as it is."""
    if shift is None:
        return 1.0
    if isinstance(shift, str):
        if shift != "auto":
            raise ValueError(f"shift must be 'auto', a number > 0 or None, got {shift!r}")
        return auto_shift(tokens)
    if not float(shift) > 0:
        raise ValueError(f"shift must be 'auto', a number > 0 or None, got {shift!r}")
    return float(shift)


def shifted(r: Union[float, Tensor], shift: float) -> Union[float, Tensor]:
    """The shifted schedule ``t = shift*r / (1 + (shift-1)*r)`` (``shift = 1``: ``t = r``)."""
    return shift * r / (1 + (shift - 1) * r)


def time_grid(batch: int, steps: int, shift: float = 1.0,
              t_min: Union[None, float, Tensor] = None, *,
              device=None, dtype=torch.float32, validate: bool = True) -> Tensor:
    """``t [batch, steps+1]``: ``t_k = shifted(k/steps)`` for ``k >= 1`` and ``t_0 = t_min``.

    ``t_min`` is a number or a per-sample tensor ``[batch]`` (None: 0).  It must stay below
    ``t_1`` so that the grid is strictly increasing; ``validate=False`` skips that check (for
    a caller whose ``t_min`` is valid by construction, e.g. the model's own draw).
    """
    if steps < 1:
        raise ValueError(f"time_grid: steps must be >= 1, got {steps}")
    r = torch.arange(steps + 1, device=device, dtype=torch.float64) / steps
    grid = shifted(r, float(shift))
    grid[-1] = 1.0
    t = grid.to(dtype).unsqueeze(0).repeat(batch, 1)
    if t_min is None:
        t[:, 0] = 0.0
        return t
    if validate:
        _check_t_min(t_min, steps, float(shift))
    if isinstance(t_min, Tensor):
        t[:, 0] = t_min.to(device=t.device, dtype=dtype)
    else:   # a fill, not a copy of a host scalar (on a GPU that copy is a host sync)
        t[:, 0] = float(t_min)
    return t


def _check_t_min(t_min: Union[float, Tensor], steps: int, shift: float) -> None:
    """ValueError unless ``0 <= t_min < t_1``.  A number is checked in Python; a tensor only
    on the CPU and outside ``torch.compile`` (reading its values would be a host sync on a
    GPU and a graph break in a compiled step)."""
    t1 = first_interior_time(steps, shift)
    if isinstance(t_min, Tensor):
        if t_min.device.type != "cpu" or torch.compiler.is_compiling():
            return
        t0 = t_min.to(torch.float64)
        bad = bool((t0 < 0).any()) or bool((t0 >= t1).any())
    else:
        bad = not 0 <= float(t_min) < t1
    if bad:
        raise ValueError(f"time_grid: t_min must lie in [0, t_1 = {t1:.4g}) "
                         f"for {steps} steps with shift {shift}")


def first_interior_time(steps: int, shift: float = 1.0) -> float:
    """``t_1`` of the grid of ``steps`` steps with ``shift``: every ``t_0`` must stay below it
    (computed in Python floats, the same float64 operations as :func:`time_grid`'s)."""
    return shifted(1.0 / steps, float(shift))


def forward_coefficients(t: Tensor) -> Tuple[Tensor, Tensor]:
    """``(a [B, T], s [B, T])`` of ``x_{t_k} = a_k x_{t_{k-1}} + s_k e_k`` for ``k = 1..T``:
    ``a_k = (1-t_k)/(1-t_{k-1})``, ``s_k = sqrt(t_k^2 - a_k^2 t_{k-1}^2)``."""
    lo, hi = t[:, :-1], t[:, 1:]
    a = (1 - hi) / (1 - lo)
    s2 = (hi * hi - a * a * lo * lo).clamp_min(0)
    return a, s2.sqrt()


def forward_trajectory(x: Tensor, t: Tensor, generator: Optional[torch.Generator] = None
                       ) -> Tensor:
    """A Markov forward trajectory ``X [B, T+1, D]`` from flat data ``x [B, D]`` on grid ``t``.

    ``x_{t_0} = (1-t_0) x + t_0 e_0``, then ``x_{t_k} = a_k x_{t_{k-1}} + s_k e_k``; the
    noise ``e [B, T+1, D]`` is drawn in one call from ``generator``.
    """
    B, D = x.shape
    T = t.shape[1] - 1
    e = torch.randn((B, T + 1, D), generator=generator, device=x.device, dtype=x.dtype)
    a, s = forward_coefficients(t.to(x.dtype))
    t0 = t[:, :1].to(x.dtype)
    levels = [(1 - t0) * x + t0 * e[:, 0]]
    for k in range(1, T + 1):
        levels.append(a[:, k - 1:k] * levels[-1] + s[:, k - 1:k] * e[:, k])
    return torch.stack(levels, dim=1)


def forward_entropy(t: Tensor, dim: int) -> Tensor:
    """``H_q [B]`` of ``q(x_{t_1..t_T} | x_{t_0})``: ``sum_k (D/2) log(2 pi e s_k^2)``."""
    _, s = forward_coefficients(t)
    return 0.5 * dim * (math.log(2 * math.pi * math.e) + 2 * torch.log(s)).sum(dim=1)


def forward_log_prob(X: Tensor, t: Tensor) -> Tensor:
    """``log q(x_{t_1..t_T} | x_{t_0}) [B]`` of flat levels ``X [B, T+1, D]`` on ``t [B, T+1]``
    (the Markov kernels ``N(a_k x_{t_{k-1}}, s_k^2 I)``); its mean is ``-H_q``."""
    a, s = forward_coefficients(t.to(X.dtype))
    r = (X[:, 1:] - a.unsqueeze(-1) * X[:, :-1]) / s.unsqueeze(-1)
    D = X.shape[2]
    return (-0.5 * r.pow(2).sum(dim=2) - D * torch.log(s)).sum(dim=1) \
        - 0.5 * D * (t.shape[1] - 1) * math.log(2 * math.pi)


def marginal_variance(t: Tensor, std: float) -> Tensor:
    """``V_t = (1-t)^2 std^2 + t^2``: the per-dimension variance of ``x_t`` for data of
    std ``std``."""
    return (1 - t) ** 2 * (std * std) + t * t


def gaussian_reverse(s: Tensor, t: Tensor, mean: float = 0.0, std: float = 1.0
                     ) -> Tuple[Tensor, Tensor, Tensor]:
    """The exact reverse step ``q(x_s | x_t)`` (``s < t``) for data ``N(mean, std^2 I)``.

    Returns ``(A, b, log_c)`` (shapes of ``s``) with ``q(x_s | x_t) = N(A x_t + b, c^2 I)``:
    ``V_r`` = :func:`marginal_variance`, ``a = (1-t)/(1-s)``, ``A = a V_s / V_t``,
    ``b = (1-s) mean - A (1-t) mean``, ``c^2 = V_s (t^2 - a^2 s^2) / V_t``.  At ``t = 1``:
    ``A = 0`` and ``q(x_s | x_1) = q(x_s)``.  The predictor starts from this step.
    """
    vs, vt = marginal_variance(s, std), marginal_variance(t, std)
    a = (1 - t) / (1 - s)
    A = a * vs / vt
    b = (1 - s) * mean - A * (1 - t) * mean
    c2 = vs * (t * t - a * a * s * s).clamp_min(0) / vt
    return A, b, 0.5 * torch.log(c2.clamp_min(torch.finfo(c2.dtype).tiny))


def posterior_coefficients(s: Tensor, t: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The forward process's posterior ``q(x_s | x_t, x) = N(A x_t + B x, C^2 I)`` (``s < t``).

    Returns ``(A, B, log_C)`` (shapes of ``s``, broadcast with ``t``):
    ``A = s^2 (1-t) / (t^2 (1-s))``, ``B = (t-s)(t+s-2ts) / (t^2 (1-s))``,
    ``C^2 = s^2 (t-s)(t+s-2ts) / (t^2 (1-s)^2)``.  Limits: ``t = 1`` gives ``A = 0``,
    ``B = 1-s``, ``C = s`` (``x_1`` is independent of ``x``); ``s = 0`` gives ``A = 0``,
    ``B = 1``, ``C = 0``, so ``log_C = -inf`` there (no NaN; the caller decides what a point
    mass means for a likelihood, see :func:`flow_matching_reverse`).
    """
    t2 = t * t
    q = (t - s) * (t + s - 2 * t * s)            # = (1-s)^2 s_{t|s}^2, the step's noise
    A = s * s * (1 - t) / (t2 * (1 - s))
    B = q / (t2 * (1 - s))
    log_C = torch.log(s) + 0.5 * torch.log(q) - torch.log(t) - torch.log1p(-s)
    return A, B, log_C


def flow_matching_reverse(s: Tensor, t: Tensor, std: float
                          ) -> Tuple[Tensor, Tensor, Tensor]:
    """The reverse step of an NTM initialised from a flow-matching model (``s < t``).

    With ``x0_hat = x_t - t v(x_t, t)`` the data estimate of a velocity model, the step is
    ``N(A x_t + B x0_hat, sig^2 I)``; returns ``(A, B, log_sig)`` (shapes of ``s``) with
    ``(A, B, C)`` of :func:`posterior_coefficients` and
    ``sig^2 = C^2 + B^2 r_t^2``,  ``r_t^2 = std^2 t^2 / ((1-t)^2 std^2 + t^2)``:
    ``r_t^2`` is ``Var[x | x_t]`` for data ``N(., std^2 I)``, so by the law of total variance
    the step is exactly ``q(x_s | x_t)`` for Gaussian data whose ``x0_hat = E[x | x_t]`` (it
    then equals :func:`gaussian_reverse`).  ``std -> 0`` gives ``sig = C``, the posterior
    ``q(x_s | x_t, x0_hat)`` of docs/design.md; ``std > 0`` keeps the ``s = 0`` slot (``C = 0``,
    ``B = 1``: ``sig = r_t``) a proper density, so the likelihood with ``t_0 = 0`` is finite.
    """
    if not std > 0:
        raise ValueError(f"flow_matching_reverse: std must be > 0, got {std}")
    A, B, log_C = posterior_coefficients(s, t)
    log_r = math.log(std) + torch.log(t) - 0.5 * torch.log(marginal_variance(t, std))
    log_sig = 0.5 * torch.logaddexp(2 * log_C, 2 * (torch.log(B) + log_r))
    return A, B, log_sig


def level_covariance(t: Tensor) -> Tensor:
    """``S [B, T, T]`` for levels ``t_0..t_{T-1}`` (``t [B, T+1]``): under ``q`` the levels given
    ``x`` are ``N((1-t_i) x, S (x) I)`` with ``S_ij = min^2 (1-max) / (1-min)``."""
    lv = t[:, :-1]
    lo = torch.minimum(lv.unsqueeze(2), lv.unsqueeze(1))
    hi = torch.maximum(lv.unsqueeze(2), lv.unsqueeze(1))
    return lo * lo * (1 - hi) / (1 - lo)
