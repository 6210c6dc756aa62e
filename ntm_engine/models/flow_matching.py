"""Flow-matching pretraining of the NTM predictor, and the NTM initialised from it
(docs/design.md section 1, "Initialising from a flow-matching model").

The flow-matching (FM) model is the NTM's own predictor backbone,
:class:`~.predictor.TrajectoryPredictor` with ``parameterization="flow_matching"``, trained
as a velocity model ``v(x_t, t)`` on the marginals ``x_t = (1-t) x + t e`` with the target
``v = e - x`` (the optimum is ``E[e - x | x_t]``; ``x_t - t v`` estimates ``E[x | x_t]``).
Its state dict (``predictor.*``) loads unchanged into an NTM with that parameterization
(:func:`load_predictor_weights`), whose slot ``t -> s`` then predicts
``N(A u_t + B (u_t - t v), sig^2)`` (:func:`~.schedule.flow_matching_reverse`).

How FM pretraining presents data to the block-causal predictor (:meth:`FlowMatchingModel.loss`):
each sample is a Markov forward trajectory (exactly the NTM's forward process,
:func:`~.schedule.forward_trajectory`) on a *random* grid: ``t_T = 1``, the interior times are
the shifted schedule of sorted uniforms (so every ``t`` in ``(0, 1]`` is trained, with the
NTM's own density of times), ``t_0 ~ U[0, min(t_min_max, t_1))`` as in NTM training.  Slot
``k`` reads ``x_{t_{k+1}}`` with the conditioning ``(t_k, t_{k+1})`` and regresses the
velocity at its input level, ``e_{k+1} - x`` with ``e_{k+1} = (x_{t_{k+1}} - (1-t_{k+1}) x)
/ t_{k+1}`` the level's marginal noise.  A fraction :data:`TRAJECTORY_FRACTION` of the
samples is presented as whole trajectories (``[B, T]`` slots, the block-causal mask, each
slot attending to the noisier levels of its trajectory), the rest as independent single
levels (``[B*T, 1]``, each slot attending to itself only):

* trajectories are what the NTM's teacher-forced pass feeds the predictor, so at
  initialisation the NTM evaluates the FM network on inputs of the kind it was trained on
  (same token layout, context and time pairs): the pretrained weights are the NTM's start,
  not just a related function;
* single levels are what the Euler sampler of the FM model feeds it (one state at a time,
  with no context of noisier states, which an ODE path would supply with a different joint
  law than the Markov forward process);
* the targets do not depend on the presentation: by the Markov property the noisier levels
  carry no information on ``x`` beyond ``x_{t_{k+1}}``, so both optima are ``E[e - x | x_t]``.

Fine-tuning adds ``lambda |mu - mu_FM|^2`` (:func:`~.loss.anchored_trajectory_nll`), ``mu_FM`` from
a frozen copy of the FM predictor on the NTM's own slot inputs.
"""
from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import schedule
from .embedding import drop_labels, resolve_labels
from .normalization import ChannelNorm
from .predictor import TrajectoryPredictor, default_patch_size
from .pretrained import PretrainedMixin

__all__ = ["FlowMatchingModel", "TRAJECTORY_FRACTION", "EULER_STEPS", "ARCHITECTURE_KEYS",
           "random_grid", "velocity_targets", "architecture_differences",
           "load_predictor_weights", "ntm_from_flow_matching", "frozen_copy"]

TRAJECTORY_FRACTION = 0.5   # samples presented as whole trajectories (the rest: single levels)
EULER_STEPS = 32            # default steps of the FM model's own sampler
# predictor settings an NTM must share with the FM model it starts from (and the data's
# normalisation, which sets what the predictor was trained on)
ARCHITECTURE_KEYS = ("data_shape", "num_classes", "width", "depth", "heads", "patch_size",
                     "mlp_ratio", "channel_mean", "channel_scale")

Labels = Union[None, int, Tensor]


def random_grid(batch: int, steps: int, shift: float, t_min_max: float,
                generator: Optional[torch.Generator] = None, *, device=None,
                dtype=torch.float32) -> Tensor:
    """A random grid per sample ``t [batch, steps+1]``: ``t_T = 1``, interior ``t_k =
    shifted(r_k)`` with ``r`` sorted uniforms on ``(0, 1]``, ``t_0 = U * min(t_min_max, t_1)``.
    Draws (from ``generator``): ``[batch, steps-1]`` uniforms, then ``[batch]``."""
    r = 1 - torch.rand(batch, steps - 1, generator=generator, device=device,
                       dtype=torch.float64)
    t = torch.ones(batch, steps + 1, device=device, dtype=torch.float64)
    t[:, 1:steps] = schedule.shifted(r.sort(dim=1).values, float(shift))
    u0 = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    t[:, 0] = u0 * t[:, 1].clamp(max=t_min_max)
    return t.to(dtype)


def velocity_targets(X: Tensor, x: Tensor, t: Tensor) -> Tensor:
    """Velocity targets ``[B, T, D]`` of levels ``1..T`` of a forward trajectory
    ``X [B, T+1, D]`` of flat data ``x [B, D]`` on ``t [B, T+1]``: ``e_k - x`` with the
    marginal noise ``e_k = (x_{t_k} - (1-t_k) x) / t_k``."""
    th = t[:, 1:].unsqueeze(-1).to(X.dtype)
    x = x.unsqueeze(1)
    return (X[:, 1:] - (1 - th) * x) / th - x


class FlowMatchingModel(PretrainedMixin, nn.Module):
    """A velocity model ``v(x_t, t)`` whose network is the NTM predictor (module docstring).

    Arguments as :class:`~.ntm.NTM` (the predictor's and the grid's; ``steps`` = slots per
    presented trajectory, the largest count of a sequence such as ``(4, 8, 16)``; ``label_dropout`` for classifier-free guidance; ``data_std`` only
    shapes the NTM started from it; ``channel_mean``/``channel_scale``: the fixed
    normalisation of latent data, :class:`~.normalization.ChannelNorm`: the loss sees
    normalised data, samples come back in the data's scale).  :meth:`from_ntm_config` takes
    an NTM config dict.
    """

    def __init__(self, data_shape: Sequence[int], steps: int = 4, num_classes: int = 0, *,
                 width: int = 128, depth: int = 4, heads: int = 4,
                 patch_size: Optional[int] = None, mlp_ratio: float = 4.0,
                 shift: Union[None, str, float] = 1.0, t_min_max: float = 0.05,
                 label_dropout: float = 0.1,
                 data_mean: float = 0.0, data_std: float = 1.0, sigma_clamp: float = 6.0,
                 channel_mean: Optional[Sequence[float]] = None,
                 channel_scale: Optional[Sequence[float]] = None):
        super().__init__()
        counts = schedule.step_counts(steps)
        data_shape = schedule.check_shape_and_steps(data_shape, counts[-1])
        if not 0 <= t_min_max < 1:
            raise ValueError(f"t_min_max must lie in [0, 1), got {t_min_max}")
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}")
        self.config: Dict[str, Any] = dict(
            data_shape=data_shape, steps=list(counts) if isinstance(steps, (list, tuple))
            else steps, num_classes=num_classes, width=width,
            depth=depth, heads=heads, patch_size=patch_size, mlp_ratio=mlp_ratio, shift=shift,
            t_min_max=t_min_max, label_dropout=label_dropout, data_mean=data_mean,
            data_std=data_std, sigma_clamp=sigma_clamp, channel_mean=channel_mean,
            channel_scale=channel_scale)
        self.norm = ChannelNorm(data_shape, channel_mean, channel_scale)
        self.data_shape, self.steps, self.num_classes = data_shape, counts[-1], num_classes
        self.dim = math.prod(data_shape)
        self.t_min_max, self.label_dropout = t_min_max, label_dropout
        self.predictor = TrajectoryPredictor(data_shape, width, depth, heads, patch_size,
                                             num_classes, mlp_ratio, data_mean, data_std,
                                             sigma_clamp, parameterization="flow_matching")
        self.shift = schedule.resolve_shift(shift, self.predictor.tokens)

    @classmethod
    def from_ntm_config(cls, cfg: Mapping[str, Any]) -> "FlowMatchingModel":
        """The FM model of an NTM keyword dict (transporter settings are ignored)."""
        names = set(inspect.signature(cls.__init__).parameters) - {"self"}
        return cls(**{k: v for k, v in cfg.items() if k in names})

    def _labels(self, y: Labels, batch: int, device) -> Optional[Tensor]:
        return resolve_labels(y, batch, self.num_classes, device, owner="flow-matching model")

    def _check_data(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.data_shape))}]"
                             f", got {list(x.shape)}")

    # ------------------------------------------------------------------ velocity
    def velocity(self, x_t: Tensor, t: Union[float, Tensor], t_next: Union[float, Tensor],
                 y: Labels = None) -> Tensor:
        """``v(x_t, t) [B, *data_shape]`` of single levels ``x_t [B, *data_shape]`` at times
        ``t`` (a number or ``[B]``).  ``t_next < t`` is the time the step goes to, which the
        predictor's slot conditioning includes (trained on random pairs; ``v`` hardly
        depends on it)."""
        self._check_data(x_t)
        B = x_t.shape[0]
        dtype = self.predictor.embed.weight.dtype
        t, t_next = (torch.as_tensor(v, device=x_t.device, dtype=dtype) for v in (t, t_next))
        for name, v in (("t", t), ("t_next", t_next)):
            if v.shape not in ((), (B,)):
                raise ValueError(f"velocity: {name} must be a number or have shape [{B}], got "
                                 f"{list(v.shape)}")
        t, t_next = t.expand(B), t_next.expand(B)
        v, _ = self.predictor.head_outputs(x_t.reshape(B, 1, self.dim), t_next.unsqueeze(1),
                                           t.unsqueeze(1), self._labels(y, B, x_t.device))
        return v.view(B, *self.data_shape)

    # ------------------------------------------------------------------ loss
    def loss(self, x: Tensor, y: Labels = None,
             generator: Optional[torch.Generator] = None) -> Tensor:
        """The FM loss ``[B]``: per sample, ``|v - (e_k - x)|^2`` summed over dimensions and
        averaged over the ``T`` levels ``t_1..t_T`` of a forward trajectory on a
        :func:`random_grid` (presented as in the module docstring: the first
        ``ceil(TRAJECTORY_FRACTION * B)`` samples as trajectories, the others as single
        levels).  Draws from ``generator``: the grid, the trajectory noise, then (training
        mode) label dropout."""
        self._check_data(x)
        B, T, D = x.shape[0], self.steps, self.dim
        xf = self.norm.to_model(x).reshape(B, D)
        t = random_grid(B, T, self.shift, self.t_min_max, generator, device=x.device,
                        dtype=x.dtype)
        X = schedule.forward_trajectory(xf, t, generator)
        y = self._labels(y, B, x.device)
        if self.training:
            y = drop_labels(y, self.label_dropout, self.num_classes, generator)
        target = velocity_targets(X, xf, t)
        u_in, t_lo, t_hi = X[:, 1:], t[:, :T], t[:, 1:]
        n = min(B, math.ceil(TRAJECTORY_FRACTION * B))
        parts = []
        if n > 0:
            parts.append(self.predictor.head_outputs(
                u_in[:n], t_lo[:n], t_hi[:n], None if y is None else y[:n])[0])
        if n < B:
            R = (B - n) * T
            ys = None if y is None else y[n:].repeat_interleave(T)
            v, _ = self.predictor.head_outputs(u_in[n:].reshape(R, 1, D),
                                               t_lo[n:].reshape(R, 1), t_hi[n:].reshape(R, 1),
                                               ys)
            parts.append(v.view(B - n, T, D))
        v = torch.cat(parts).to(target.dtype)
        return (v - target).pow(2).sum(dim=2).mean(dim=1)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, y: Labels = None, steps: Optional[int] = None,
               temperature: float = 1.0, guidance: float = 0.0,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` samples ``[n, *data_shape]`` by Euler steps of the ODE ``dx/dt = v(x, t)``
        from ``x_1 = temperature * e`` (``e ~ N(0, I)`` from ``generator``) to ``t = 0`` on
        the model's shifted grid of ``steps`` (default :data:`EULER_STEPS`) intervals:
        ``x_{t_k} = x_{t_{k+1}} - (t_{k+1} - t_k) v(x_{t_{k+1}}, t_{k+1})``.  ``guidance``
        ``w != 0`` (needs labels): ``v = (1+w) v(.|y) - w v(.|null)``."""
        p = next(self.parameters())
        device, dtype = p.device, p.dtype
        N = steps or EULER_STEPS
        t = schedule.time_grid(n, N, self.shift, 0.0, device=device, dtype=dtype)
        y = self._labels(y, n, device)
        if guidance != 0 and y is None:
            raise ValueError("guidance needs labels y (and a class-conditional model)")
        x = temperature * torch.randn(n, *self.data_shape, generator=generator, device=device,
                                      dtype=dtype)
        if guidance != 0:   # conditional rows, then the same rows with the null label
            y2, t2 = torch.cat([y, torch.full_like(y, self.num_classes)]), t.repeat(2, 1)
        for k in range(N - 1, -1, -1):
            if guidance != 0:
                v = self.velocity(x.repeat(2, *([1] * len(self.data_shape))), t2[:, k + 1],
                                  t2[:, k], y2)
                v = (1 + guidance) * v[:n] - guidance * v[n:]
            else:
                v = self.velocity(x, t[:, k + 1], t[:, k], y)
            dt = (t[:, k + 1] - t[:, k]).view(n, *([1] * len(self.data_shape)))
            x = x - dt * v
        return self.norm.to_data(x)


# ----------------------------------------------------------------------------- the NTM from it

def architecture_differences(fm_config: Mapping[str, Any], ntm_config: Mapping[str, Any]
                             ) -> List[Tuple[str, Any, Any]]:
    """``(key, fm value, ntm value)`` for each of :data:`ARCHITECTURE_KEYS` on which two
    model configs disagree (``patch_size`` None counts as its default)."""
    def norm(cfg, k):
        v = cfg.get(k)
        if k == "data_shape":
            return [int(s) for s in v]
        if k == "patch_size" and v is None:
            return default_patch_size(cfg["data_shape"])
        return v
    return [(k, fm_config.get(k), ntm_config.get(k)) for k in ARCHITECTURE_KEYS
            if norm(fm_config, k) != norm(ntm_config, k)]


def load_predictor_weights(ntm: nn.Module, fm_state: Mapping[str, Tensor]) -> None:
    """Copy an FM model's weights (state dict with ``predictor.*`` keys) into
    ``ntm.predictor``; the NTM must use the ``"flow_matching"`` parameterization."""
    if ntm.predictor.parameterization != "flow_matching":
        raise ValueError("an NTM started from a flow-matching model needs "
                         "parameterization='flow_matching', got "
                         f"{ntm.predictor.parameterization!r}")
    sd = {k[len("predictor."):]: v for k, v in fm_state.items() if k.startswith("predictor.")}
    missing, unexpected = ntm.predictor.load_state_dict(sd, strict=False)
    # an NTM of several step counts adds its (zero-initialised) step-count embedding
    missing = [k for k in missing if not k.startswith("steps_embed.")]
    if missing or unexpected:
        raise ValueError(f"the flow-matching weights do not fit the NTM's predictor: missing "
                         f"{missing}, unexpected {unexpected}")


def ntm_from_flow_matching(fm: FlowMatchingModel, **ntm_kwargs) -> nn.Module:
    """A new NTM with ``fm``'s predictor (weights and settings), the ``"flow_matching"``
    parameterization and a new (identity) transporter; ``ntm_kwargs`` set the rest."""
    from .ntm import NTM

    kw = {**fm.config, **ntm_kwargs, "parameterization": "flow_matching"}
    ntm = NTM(**kw).to(next(fm.parameters()).dtype)
    load_predictor_weights(ntm, fm.state_dict())
    return ntm


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode without gradients (the FM reference while fine-tuning)."""
    ref = copy.deepcopy(module).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
