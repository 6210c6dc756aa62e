"""The Normalizing Trajectory Model (docs/design.md section 1).

Shapes: data ``x [B, *data_shape]`` (``[D]`` or ``[C, H, W]``, ``D`` = number of elements);
a trajectory ``X [B, T+1, *data_shape]`` with levels ``x_{t_0}, ..., x_{t_T}`` on a grid
``t [B, T+1]`` (``t_T = 1``); labels ``y [B]`` (long, ``0..num_classes-1``) or None.
A model with ``cond_dim = C > 0`` also takes condition tokens ``cond [B, L, C]`` (float, e.g. a
text encoder's last hidden states) with a padding mask ``cond_mask [B, L]`` (bool, True = real)
wherever it takes ``y`` (keywords ``cond=``, ``cond_mask=``, or ``y`` a
:class:`~ntm_engine.condition.Condition`); the predictor attends to them as a prefix, the
transporter never sees them (docs/design.md section 1, "Condition tokens").

``u_{t_k} = f_T(x_{t_k}; t_k, y)`` for ``k < T`` (the transporter), ``u_{t_T} = x_1``.  The
predictor gives ``N(mu_k, sig_k^2)`` for ``u_{t_k}`` from ``u_{t_{k+1}}, ..., u_{t_T}``.
All log-densities are per sample, in nats.

Several step counts: ``NTM(..., steps=(4, 8, 16))`` trains with the batch dealt by one random
permutation into one group per count, of static near-equal sizes (:mod:`.loss`: no host
sync, one graph under ``torch.compile``; each sample's expected loss is the mean over the
counts), one predictor pass per group and one transporter call over all groups' rows (it is
row-wise), so no compute is spent on padding and each group's pass is exactly the single-``T``
one; the predictor (and a transporter that accepts ``steps=``) then sees ``T`` and the model
is evaluated only at trained ``T``.  A model with one ``T`` (an int) has
no step-count embedding (its state dict is unchanged) and may be evaluated on other grids.

This file holds the configuration, the modules and the forward process; the data sets'
preset configurations are in :mod:`.presets`; the rest is one file each, functions of an :class:`NTM`: the training loss (:mod:`.loss`, :meth:`NTM.forward`),
the likelihood and its bounds (:mod:`.likelihood`, :meth:`NTM.log_prob`) and sampling
(:mod:`.sampler`, :meth:`NTM.sample`).  The schedule's maths is in :mod:`.schedule`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import likelihood, loss, schedule
from ..condition import Condition, labels_of
from .embedding import resolve_condition, resolve_labels
from .normalization import ChannelNorm
from .predictor import TrajectoryPredictor
from .presets import NTMPresets
from .pretrained import PretrainedMixin
from .sampler import resample as _resample
from .sampler import sample as _sample
from .transporter import build_transporter

__all__ = ["NTM"]

Labels = Union[None, int, Tensor]
Cond = Union[None, int, Tensor, Condition]   # labels, or a Condition (labels and/or tokens)


TRANSPORTER_BACKWARDS = ("auto", "inverse", "recompute")


def transporter_backward_mode(kind: str, reversible: bool, backward: str) -> Union[bool, str]:
    """The transporter stack's ``reversible=`` (:class:`~ntm_engine.nn.InvertibleSequential`)
    from the NTM's options: plain autograd without ``reversible``; else ``backward``
    ``"inverse"`` (rebuild each layer's input by its inverse: no stored activations),
    ``"recompute"`` (keep each layer's input, recompute its forward in parallel) or ``"auto"``
    (recompute for the autoregressive kind, whose inverse decodes token by token; inverse for
    the couplings, whose inverse is as cheap as their forward)."""
    if backward not in TRANSPORTER_BACKWARDS:
        raise ValueError(f"transporter_backward must be one of {TRANSPORTER_BACKWARDS}, got "
                         f"{backward!r}")
    if not reversible:
        return False
    if backward == "auto":
        backward = "recompute" if kind == "autoregressive" else "inverse"
    return "recompute" if backward == "recompute" else True


class NTM(NTMPresets, PretrainedMixin, nn.Module):
    """Normalizing Trajectory Model for data of shape ``data_shape`` (``[D]`` or ``[C,H,W]``).

    ``steps`` (T) levels below ``t = 1``, an int or several (e.g. ``(4, 8, 16)``: ``T`` drawn per
    example in training, :attr:`trained_steps`; :attr:`steps` is the smallest, the default
    of sampling and of the likelihood; ``step_shares``, one positive number per count in
    increasing ``T``: how often each is drawn, :attr:`step_shares` the probabilities, None
    equal); ``num_classes > 0`` makes it class-conditional
    (labels dropped to a null class with probability ``label_dropout`` in training, for
    guidance).  ``cond_dim = C > 0`` makes it take condition tokens ``cond [B, L, C]`` (with
    ``cond_mask [B, L]``), besides or instead of labels, that the predictor attends to; they are
    dropped together with the labels (one draw per sample, probability ``label_dropout``) to
    a learned null sequence.  Predictor: ``width``, ``depth``, ``heads``, ``patch_size`` (None: 4/2/1 for
    images, one token of up to 64 features for vectors), ``mlp_ratio``, ``dropout`` (of the
    blocks' residual branches in training).  Transporter:
    ``transporter_layers`` couplings (0: identity) with ``transporter_hidden`` units,
    soft clamp ``clamp``, time/class context of ``context_dim``, ``reversible`` backward
    (``transporter_backward``: how, :func:`transporter_backward_mode`).
    Grid: shifted schedule ``shift`` (a number, None = 1, or ``"auto"``: the paper's rule from
    the predictor's token count per level, :func:`~.schedule.auto_shift`); in training
    ``t_0 ~ U[0, t_min_max]`` per sample.
    ``data_mean``/``data_std``: the new predictor is the exact reverse process of data
    ``N(data_mean, data_std^2 I)`` (a sensible start; the head learns a correction).
    ``sigma_clamp`` bounds the learned log-scale correction.  ``parameterization``:
    ``"gaussian"`` (that start) or ``"flow_matching"`` (the predictor's head is a velocity;
    an NTM initialised from a flow-matching model, :mod:`.flow_matching`).
    ``channel_mean``/``channel_scale`` (one number per channel, or None): the fixed
    normalisation of continuous data such as latents (:class:`~.normalization.ChannelNorm`):
    the model works on ``(x - mean_c) / scale_c`` (``data_mean``/``data_std`` then describe
    that normalised data), takes and returns data ``x`` in its own scale, and its likelihood
    is the density of ``x`` (the normalisation's log-Jacobian included).
    """

    def __init__(self, data_shape: Sequence[int], steps: Union[int, Sequence[int]] = 4,
                 num_classes: int = 0, *,
                 width: int = 128, depth: int = 4, heads: int = 4,
                 patch_size: Optional[int] = None, transporter_layers: int = 4,
                 transporter_hidden: int = 128, shift: Union[None, str, float] = 1.0,
                 t_min_max: float = 0.05,
                 label_dropout: float = 0.1, clamp: Optional[float] = 2.0,
                 mlp_ratio: float = 4.0, context_dim: int = 64, data_mean: float = 0.0,
                 data_std: float = 1.0, sigma_clamp: float = 6.0, reversible: bool = True,
                 parameterization: str = "gaussian", transporter: str = "coupling",
                 transporter_label_conditioned: bool = False,
                 transporter_backward: str = "auto",
                 channel_mean: Optional[Sequence[float]] = None,
                 channel_scale: Optional[Sequence[float]] = None, cond_dim: int = 0,
                 step_shares: Optional[Sequence[float]] = None, dropout: float = 0.0):
        super().__init__()
        counts = schedule.step_counts(steps)
        shares = schedule.step_shares(step_shares, counts)
        data_shape = schedule.check_shape_and_steps(data_shape, counts[0])
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}")
        if not isinstance(cond_dim, int) or isinstance(cond_dim, bool) or cond_dim < 0:
            raise ValueError(f"cond_dim (features per condition token; 0: none) must be an "
                             f"integer >= 0, got {cond_dim!r}")
        self.config: Dict[str, Any] = dict(
            data_shape=data_shape, steps=list(counts) if isinstance(steps, (list, tuple))
            else steps, num_classes=num_classes, width=width, depth=depth, heads=heads, patch_size=patch_size,
            transporter_layers=transporter_layers, transporter_hidden=transporter_hidden,
            shift=shift, t_min_max=t_min_max, label_dropout=label_dropout, clamp=clamp,
            mlp_ratio=mlp_ratio, context_dim=context_dim, data_mean=data_mean,
            data_std=data_std, sigma_clamp=sigma_clamp, reversible=reversible,
            parameterization=parameterization, transporter=transporter,
            transporter_label_conditioned=transporter_label_conditioned,
            transporter_backward=transporter_backward, channel_mean=channel_mean,
            channel_scale=channel_scale, cond_dim=cond_dim,
            step_shares=None if step_shares is None else [float(v) for v in step_shares],
            dropout=dropout)
        self.norm = ChannelNorm(data_shape, channel_mean, channel_scale)
        self.data_shape, self.num_classes, self.cond_dim = data_shape, num_classes, cond_dim
        self.trained_steps: Tuple[int, ...] = counts
        self.step_shares: Optional[Tuple[float, ...]] = shares
        self.steps = counts[0]
        self.dim = math.prod(data_shape)
        self.t_min_max, self.label_dropout = t_min_max, label_dropout
        self.transporter = build_transporter(
            transporter, data_shape, layers=transporter_layers, hidden=transporter_hidden,
            num_classes=num_classes, clamp=clamp, context_dim=context_dim,
            reversible=transporter_backward_mode(transporter, reversible, transporter_backward),
            label_conditioned=transporter_label_conditioned, patch_size=patch_size,
            step_conditioned=self.multi_steps)
        self.predictor = TrajectoryPredictor(
            data_shape, width, depth, heads, patch_size, num_classes, mlp_ratio, data_mean,
            data_std, sigma_clamp, parameterization,
            step_counts=counts if self.multi_steps else None, cond_dim=cond_dim, dropout=dropout)
        self.shift = schedule.resolve_shift(shift, self.predictor.tokens)
        t1 = schedule.first_interior_time(counts[-1], self.shift)
        if not 0 <= t_min_max < t1:
            raise ValueError(f"t_min_max must lie in [0, t_1 = {t1:.4g}) (T = {counts[-1]}, "
                             f"shift {self.shift:.4g}), got {t_min_max}")

    # ------------------------------------------------------------------ helpers
    @property
    def multi_steps(self) -> bool:
        """True when trained on several step counts (the predictor then sees ``T``)."""
        return len(self.trained_steps) > 1

    def check_steps(self, steps: Optional[int]) -> int:
        """``steps`` (None: :attr:`steps`) after checking that a model trained on several step
        counts was trained on it (ValueError naming ``steps`` otherwise)."""
        T = self.steps if steps is None else int(steps)
        if T < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if self.multi_steps and T not in self.trained_steps:
            raise ValueError(f"steps: T = {T} was not trained; this model was trained on step "
                             f"counts {self.trained_steps}")
        return T

    def predictor_steps(self, T: int, rows: int, device) -> Dict[str, Tensor]:
        """The predictor's ``steps=`` keyword for ``rows`` trajectories of ``T`` steps (empty
        for a model with one step count)."""
        if not self.multi_steps:
            return {}
        return {"steps": torch.full((rows,), T, dtype=torch.long, device=device)}

    def transporter_sees_labels(self) -> bool:
        """Whether the transporter is label-conditioned (legacy; guidance then runs each branch
        in its own space, :mod:`.sampler`)."""
        flag = getattr(self.transporter, "label_conditioned", None)
        return bool(getattr(self.transporter, "label", None) is not None if flag is None
                    else flag)

    def transporter_sees_steps(self) -> bool:
        """Whether the transporter takes the step count (``steps=`` rows): its
        ``step_conditioned`` flag, else whether it has a ``step_count`` embedding."""
        flag = getattr(self.transporter, "step_conditioned", None)
        return bool(getattr(self.transporter, "step_count", None) is not None if flag is None
                    else flag)

    def transport(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None, *,
                  steps: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """``f_T``: rows ``x [R, D]`` at times ``t [R]`` (labels ``y [R]``, or a condition whose
        labels are taken: the transporter never sees condition tokens) -> ``(u, logdet [R])``;
        ``steps`` (the trajectories' ``T``) reaches a transporter that takes it."""
        return self.transporter(x, t, labels_of(y), **self._rows_steps(t, steps))

    def transport_inverse(self, u: Tensor, t: Tensor, y: Optional[Tensor] = None, *,
                          steps: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """``f_T^{-1}`` of rows ``u [R, D]`` (arguments as :meth:`transport`)."""
        return self.transporter.inverse(u, t, labels_of(y), **self._rows_steps(t, steps))

    def _rows_steps(self, t: Tensor, steps: Optional[int]) -> Dict[str, Tensor]:
        """``{"steps": [R]}`` for a step-conditioned transporter (several trained step counts
        only), else ``{}``."""
        if not (self.multi_steps and self.transporter_sees_steps()):
            return {}
        T = self.steps if steps is None else steps
        return {"steps": torch.full(t.shape, T, dtype=torch.long, device=t.device)}

    def time_grid(self, batch: int, steps: Optional[int] = None,
                  t_min: Union[None, float, Tensor] = 0.0, *, device=None,
                  dtype=torch.float32, validate: bool = True) -> Tensor:
        """``t [batch, steps+1]`` on this model's schedule (``steps`` None: :attr:`steps`;
        ``validate``: :func:`~.schedule.time_grid`)."""
        return schedule.time_grid(batch, steps or self.steps, self.shift, t_min,
                                  device=device, dtype=dtype, validate=validate)

    def resolve_labels(self, y: Labels, batch: int, device) -> Optional[Tensor]:
        """Labels ``y`` (None, an int, or ``[batch]``) as a long tensor ``[batch]`` or None."""
        return resolve_labels(y, batch, self.num_classes, device)

    def resolve_condition(self, y: Cond, batch: int, device, cond: Optional[Tensor] = None,
                          cond_mask: Optional[Tensor] = None) -> Cond:
        """The condition of ``batch`` rows from labels ``y`` (or a
        :class:`~ntm_engine.condition.Condition`) and condition tokens ``cond [batch, L, C]``
        or ``[L, C]`` with ``cond_mask`` (:func:`~.embedding.resolve_condition`): labels
        ``[batch]`` or None without tokens, else a ``Condition``."""
        return resolve_condition(y, batch, self.num_classes, self.cond_dim, device, cond=cond,
                                 cond_mask=cond_mask)

    def check_denoiser(self, denoiser: Optional[nn.Module]) -> None:
        """A denoiser that declares ``data_shape``/``num_classes`` must declare this model's."""
        if denoiser is None:
            return
        shape = getattr(denoiser, "data_shape", None)
        if shape is not None and tuple(shape) != self.data_shape:
            raise ValueError(f"sample: the denoiser is for data of shape {list(shape)}, this NTM "
                             f"for {list(self.data_shape)}")
        classes = getattr(denoiser, "num_classes", None)
        if classes is not None and classes != self.num_classes:
            raise ValueError(f"sample: label mismatch: the denoiser has num_classes={classes}, "
                             f"this NTM num_classes={self.num_classes}")

    def _check_data(self, x: Tensor, name: str = "x") -> None:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"{name} must have shape [B, {', '.join(map(str, self.data_shape))}]"
                             f", got {list(x.shape)}")

    # ------------------------------------------------------------------ forward process
    def forward_trajectory(self, x: Tensor, generator: Optional[torch.Generator] = None,
                           t_min: Union[None, float, Tensor] = None, *,
                           steps: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """Draw a Markov forward trajectory of data ``x [B, *data_shape]`` with ``steps`` (None:
        :attr:`steps`) steps.

        Returns ``(X [B, T+1, *data_shape], t [B, T+1])`` with ``X[:, 0] = x_{t_0}`` and
        ``X[:, T] = x_1 ~ N(0, I)``, in the model's space (``x`` normalised by :attr:`norm`
        first when the model has a channel normalisation).  ``t_min`` (``t_0``): a number or
        ``[B]``; None draws ``U[0, t_min_max]`` per sample in training mode and uses 0 in eval
        mode.  Random draws (``t_0`` first, then the noise) come from ``generator``.
        """
        self._check_data(x)
        B, T = x.shape[0], self.check_steps(steps)
        drawn = t_min is None   # the model's own draw lies below t_1 by construction
        if drawn:
            if self.training and self.t_min_max > 0:
                t_min = torch.rand(B, generator=generator, device=x.device,
                                   dtype=x.dtype) * self.t_min_max
            else:
                t_min = 0.0
        t = self.time_grid(B, T, t_min, device=x.device, dtype=x.dtype, validate=not drawn)
        X = schedule.forward_trajectory(self.norm.to_model(x).reshape(B, self.dim), t,
                                        generator)
        return X.view(B, T + 1, *self.data_shape), t

    # ------------------------------------------------------------------ likelihood
    def _trajectory_steps(self, X: Tensor, t: Tensor) -> int:
        """``T`` of a trajectory ``X [B, T+1, *data_shape]`` on ``t [B, T+1]``, checked."""
        B, T = X.shape[0], X.shape[1] - 1
        if T < 1 or tuple(X.shape[2:]) != self.data_shape or t.shape != (B, T + 1):
            raise ValueError(f"X must be [B, T+1, {', '.join(map(str, self.data_shape))}] with "
                             f"T >= 1 and t [B, T+1]; got X {list(X.shape)}, t {list(t.shape)}")
        return self.check_steps(T)

    def _rows(self, X: Tensor, t: Tensor, y: Cond, T: int
              ) -> Tuple[Tensor, Tensor, Optional[Tensor], Dict[str, Tensor]]:
        """:meth:`transporter_rows` of a checked trajectory with a resolved condition."""
        B = X.shape[0]
        rows_t = t[:, :T].to(X.dtype).reshape(B * T)
        labels = labels_of(y)
        rows_y = None if labels is None else labels.repeat_interleave(T)
        return (X.reshape(B, T + 1, self.dim)[:, :T].reshape(B * T, self.dim), rows_t, rows_y,
                self._rows_steps(rows_t, T))

    def transporter_rows(self, X: Tensor, t: Tensor, y: Cond = None
                         ) -> Tuple[Tensor, Tensor, Optional[Tensor], Dict[str, Tensor]]:
        """The transporter's inputs for a trajectory ``X [B, T+1, *data_shape]`` on
        ``t [B, T+1]``: ``(x [B*T, D], t [B*T], labels [B*T] or None, extra keyword rows)``,
        rows in ``(sample, slot)`` order (what :meth:`predict_levels` transports)."""
        T = self._trajectory_steps(X, t)
        return self._rows(X, t, self.resolve_condition(y, X.shape[0], X.device), T)

    def predict_levels(self, X: Tensor, t: Tensor, y: Cond = None, *,
                       transported: Optional[Tuple[Tensor, Tensor]] = None
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Teacher-forced pass over a trajectory ``X [B, T+1, *data_shape]`` on ``t [B, T+1]``
        with the condition ``y`` (labels or a :class:`~ntm_engine.condition.Condition`):
        ``(U [B, T, D], logdet [B, T], mu [B, T, D], log_sigma [B, T, D])`` with
        ``U[:, k] = f_T(x_{t_k}; t_k)``, its log-det, and the predicted Gaussian of
        ``U[:, k]`` (from ``U[:, k+1:]`` and ``x_1`` only).  ``D`` = flat data size.
        ``transported``: ``(u [B*T, D], logdet [B*T])`` of :meth:`transporter_rows`, already
        computed (several groups' rows in one transporter call, :func:`.loss.group_levels`)."""
        B, D = X.shape[0], self.dim
        T = self._trajectory_steps(X, t)
        y = self.resolve_condition(y, B, X.device)
        if transported is None:
            x_rows, t_rows, y_rows, extra = self._rows(X, t, y, T)
            transported = self.transporter(x_rows, t_rows, y_rows, **extra)
        u, logdet = transported
        U = u.view(B, T, D)
        t = t.to(X.dtype)
        mu, log_sigma = self.predictor(self.slot_inputs(U, X), t[:, :T], t[:, 1:], y,
                                       **self.predictor_steps(T, B, X.device))
        return U, logdet.view(B, T), mu.to(U.dtype), log_sigma.to(U.dtype)

    @staticmethod
    def slot_inputs(U: Tensor, X: Tensor) -> Tensor:
        """The predictor's input ``[B, T, D]``: slot ``k`` reads ``u_{t_{k+1}}`` (``U [B, T, D]``
        from :meth:`predict_levels`, ``x_1`` the last level of ``X [B, T+1, ...]``)."""
        B, T, D = U.shape
        return torch.cat([U[:, 1:], X.reshape(B, T + 1, D)[:, T:]], dim=1)

    def last_level(self, X: Tensor) -> Tensor:
        """``x_1 [B, D]``: the last level of a trajectory ``X [B, T+1, ...]``, flat."""
        return X.reshape(X.shape[0], X.shape[1], self.dim)[:, -1]

    def trajectory_log_prob(self, X: Tensor, t: Tensor, y: Cond = None, *,
                            cond: Optional[Tensor] = None,
                            cond_mask: Optional[Tensor] = None) -> Tensor:
        """Exact ``log p(X) [B]`` (nats) of a trajectory ``X [B, T+1, *data_shape]`` on the grid
        ``t [B, T+1]`` (any ``T >= 1``; the model's own grid is :meth:`forward_trajectory`'s).
        No condition dropout (:func:`~.likelihood.trajectory_log_prob`).  ``cond``,
        ``cond_mask``: condition tokens (:meth:`resolve_condition`)."""
        y = self.resolve_condition(y, X.shape[0], X.device, cond, cond_mask)
        return likelihood.trajectory_log_prob(self, X, t, y)

    # ------------------------------------------------------------------ training loss
    def forward(self, x: Tensor, y: Cond = None, generator: Optional[torch.Generator] = None,
                *, trajectory_loss: str = "end_to_end", cond: Optional[Tensor] = None,
                cond_mask: Optional[Tensor] = None) -> Tensor:
        """The training loss ``[B]`` (nats per sample; the Trainer minimises its mean): the
        negative log-likelihood of a forward trajectory drawn from data ``x [B,
        *data_shape]`` (labels ``y [B]``, an int or None; condition tokens ``cond [B, L, C]``
        with ``cond_mask [B, L]``, or ``y`` a :class:`~ntm_engine.condition.Condition`),
        :func:`~.loss.trajectory_nll`.

        >>> import torch
        >>> from ntm_engine.models import NTM
        >>> model = NTM((2,), steps=2, width=32, depth=1, heads=2, transporter_layers=1)
        >>> model(torch.randn(5, 2)).shape
        torch.Size([5])
        """
        y = self.resolve_condition(y, x.shape[0], x.device, cond, cond_mask)
        return loss.trajectory_nll(self, x, y, generator, trajectory_loss=trajectory_loss)

    trajectory_nll = forward

    # ------------------------------------------------------------------ likelihood
    def log_prob(self, x: Tensor, y: Cond = None, samples: int = 1, *,
                 generator: Optional[torch.Generator] = None,
                 steps: Optional[int] = None, cond: Optional[Tensor] = None,
                 cond_mask: Optional[Tensor] = None) -> Tensor:
        """A lower bound ``[B]`` (nats) on ``log p(x)`` of data ``x [B, *data_shape]`` with
        ``t_0 = 0``, importance-weighted over ``samples`` forward trajectories (tighter as it
        grows) on the grid of ``steps`` (None: :attr:`steps`); differentiable in ``x`` and the
        weights.  Conditioned on ``y`` and/or the tokens ``cond`` (:meth:`resolve_condition`).
        :func:`~.likelihood.log_likelihood_bound`."""
        self._check_data(x)
        y = self.resolve_condition(y, x.shape[0], x.device, cond, cond_mask)
        return likelihood.log_likelihood_bound(self, x, y, samples=samples,
                                               generator=generator, steps=steps)

    def forward_entropy(self, t: Tensor) -> Tensor:
        """``H_q [B]`` (nats) of the forward process on grid ``t [B, T+1]``."""
        return schedule.forward_entropy(t, self.dim)

    def bits_per_dim(self, x: Tensor, y: Cond = None, bins: int = 256,
                     generator: Optional[torch.Generator] = None, *,
                     dequantize: bool = False, samples: int = 1,
                     steps: Optional[int] = None, cond: Optional[Tensor] = None,
                     cond_mask: Optional[Tensor] = None) -> Tensor:
        """Per-sample bound ``[B]`` on bits/dim of discrete data with ``bins`` bins on [-1, 1]
        (:func:`~.likelihood.bits_per_dim`; ``dequantize=True`` adds the uniform noise
        here); condition as :meth:`log_prob`."""
        self._check_data(x)
        y = self.resolve_condition(y, x.shape[0], x.device, cond, cond_mask)
        return likelihood.bits_per_dim(self, x, y, bins, generator, dequantize=dequantize,
                                       samples=samples, steps=steps)

    def nats_per_dim(self, x: Tensor, y: Labels = None,
                     generator: Optional[torch.Generator] = None, *, samples: int = 1,
                     steps: Optional[int] = None) -> Tensor:
        """Per-sample bound ``[B]`` on nats per dimension of continuous data such as latents
        (no bins; the channel normalisation's log-Jacobian included:
        :func:`~.likelihood.nats_per_dim`)."""
        self._check_data(x)
        return likelihood.nats_per_dim(self, x, y, generator, samples=samples, steps=steps)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, y: Cond = None, steps: Optional[int] = None, *,
               temperature: float = 1.0, guidance: float = 0.0,
               generator: Optional[torch.Generator] = None, return_trajectory: bool = False,
               use_cache: bool = True, t_min: Optional[float] = None,
               denoiser: Optional[nn.Module] = None,
               sampler: str = "transporter", cond: Optional[Tensor] = None,
               cond_mask: Optional[Tensor] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Draw ``n`` samples ``[n, *data_shape]`` (no gradients; steps in :mod:`.sampler`).

        ``u_1 ~ N(0, I)``; for ``k = T-1..0``: ``u_{t_k} = mu_k + temperature * sig_k * z``;
        ``x = f_T^{-1}(u_{t_0}; t_0)``.  ``steps`` (None: :attr:`steps`) is the grid's ``T``;
        a model trained on several step counts refuses an untrained one, a model trained on
        one evaluates its predictor on any grid of the same schedule, with a warning (those
        steps were never trained: on the colour patches a ``T = 4`` model is 27x further
        from the data at 8 steps than at 4).  ``t_min`` is the
        grid's ``t_0`` (``0 <= t_min < t_1``; None: the denoiser's ``t_d``, for
        ``"trajectory-denoise"`` the model's ``t_min_max``, else 0;
        :func:`~.sampler.grid_start`).  ``y``: int or ``[n]`` labels (None: the null
        class); ``cond``: condition tokens ``[n, L, C]`` or ``[L, C]`` (one sequence for all)
        with ``cond_mask`` (None: unconditional tokens, the learned null sequence).
        ``guidance`` ``w != 0`` (needs labels or tokens) runs the unconditional branch
        alongside (one batch of ``2n``) and combines the two Gaussians with
        :func:`~.guidance.guide` (in one space; see :mod:`.sampler` for a label-conditioned
        transporter).  ``use_cache`` keeps the keys/values of finished slots.  Decoders:
        ``denoiser`` (e.g. a :class:`~.denoiser.Denoiser` distilled at ``t_0 = t_min``):
        ``x = denoiser(u_{t_0} [n, *data_shape], t_0 [n], y)`` replaces the transporter
        inverse; ``sampler="trajectory-denoise"`` (the slow exact path; use ``t_min > 0``):
        the whole trajectory through ``f_T^{-1}``, then ``x`` = :meth:`posterior_mean` of it
        (Tweedie with the matrix ``S``, docs/design.md section 1, "Trajectory denoising").
        Noise from ``generator``: ``u_1`` then one ``z`` per step.  ``return_trajectory``:
        ``(x, X)``, ``X [n, T+1, *data_shape]`` the x-space levels ``x_{t_0}, ..., x_{t_T} =
        u_1`` with level 0 replaced by the output ``x``.  With a channel normalisation
        (:attr:`norm`) ``x`` is returned in the data's scale and ``X`` stays in the model's
        (normalised) space, as do the denoiser's input and output.
        """
        return _sample(self, n, y, steps, temperature=temperature, guidance=guidance,
                       generator=generator, return_trajectory=return_trajectory,
                       use_cache=use_cache, t_min=t_min, denoiser=denoiser, sampler=sampler,
                       cond=cond, cond_mask=cond_mask)

    def resample(self, x: Tensor, y: Cond = None, steps: Optional[int] = None, *,
                 keep: int = 1, temperature: float = 1.0, guidance: float = 0.0,
                 generator: Optional[torch.Generator] = None, cond: Optional[Tensor] = None,
                 cond_mask: Optional[Tensor] = None) -> Tensor:
        """Variations of data ``x [B, *data_shape]`` (the data's scale): a forward trajectory
        of ``x`` on the ``steps``-step grid with ``t_0 = 0``, its levels ``t_keep .. t_T``
        kept as they are, the ``keep`` reverse steps below them sampled as in :meth:`sample`
        (condition, ``temperature``, ``guidance`` the same); returns ``[B, *data_shape]`` in
        the data's scale.  ``keep = 1`` redraws only the last step (from ``x``'s own
        ``x_{t_1}``: how good the last conditional flow is on its own), ``keep = T`` gives
        fresh samples (``x`` only seeds the noise).  Noise from ``generator``: the forward
        trajectory, then one ``z`` per sampled step.  No gradients."""
        return _resample(self, x, y, steps, keep=keep, temperature=temperature,
                         guidance=guidance, generator=generator, cond=cond, cond_mask=cond_mask)

    # ------------------------------------------------------------------ trajectory scores
    def trajectory_score(self, X: Tensor, t: Tensor, y: Cond = None, *,
                         cond: Optional[Tensor] = None,
                         cond_mask: Optional[Tensor] = None) -> Tensor:
        """``grad_X log p(X)`` ``[B, T+1, *data_shape]`` (:func:`~.likelihood.trajectory_score`;
        condition as :meth:`trajectory_log_prob`)."""
        y = self.resolve_condition(y, X.shape[0], X.device, cond, cond_mask)
        return likelihood.trajectory_score(self, X, t, y)

    def posterior_mean(self, X: Tensor, t: Tensor, y: Cond = None, *,
                       cond: Optional[Tensor] = None,
                       cond_mask: Optional[Tensor] = None) -> Tensor:
        """Tweedie estimate ``E[x | X] [B, *data_shape]`` of the clean data from a trajectory
        (:func:`~.likelihood.posterior_mean`; condition as :meth:`trajectory_log_prob`)."""
        y = self.resolve_condition(y, X.shape[0], X.device, cond, cond_mask)
        return likelihood.posterior_mean(self, X, t, y)
