"""The Normalizing Trajectory Model (DESIGN.md section 1).

Shapes: data ``x [B, *data_shape]`` (``[D]`` or ``[C, H, W]``, ``D`` = number of elements);
a trajectory ``X [B, T+1, *data_shape]`` with levels ``x_{t_0}, ..., x_{t_T}`` on a grid
``t [B, T+1]`` (``t_T = 1``); labels ``y [B]`` (long, ``0..num_classes-1``) or None.

``u_{t_k} = f_T(x_{t_k}; t_k, y)`` for ``k < T`` (the transporter), ``u_{t_T} = x_1``.  The
predictor gives ``N(mu_k, sig_k^2)`` for ``u_{t_k}`` from ``u_{t_{k+1}}, ..., u_{t_T}``.
All log-densities are per sample, in nats.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .. import ops
from . import schedule
from .embedding import drop_labels, resolve_labels
from .guidance import guide
from .predictor import TrajectoryPredictor
from .transporter import build_transporter

__all__ = ["NTM"]

Labels = Union[None, int, Tensor]


class NTM(nn.Module):
    """Normalizing Trajectory Model for data of shape ``data_shape`` (``[D]`` or ``[C,H,W]``).

    ``steps`` (T) levels below ``t = 1``; ``num_classes > 0`` makes it class-conditional
    (labels dropped to a null class with probability ``label_dropout`` in training, for
    guidance).  Predictor: ``width``, ``depth``, ``heads``, ``patch_size`` (None: 4/2/1 for
    images, one token of up to 64 features for vectors), ``mlp_ratio``.  Transporter:
    ``transporter_layers`` couplings (0: identity) with ``transporter_hidden`` units,
    soft clamp ``clamp``, time/class context of ``context_dim``, ``reversible`` backward.
    Grid: shifted schedule ``shift``; in training ``t_0 ~ U[0, t_min_max]`` per sample.
    ``data_mean``/``data_std``: the new predictor is the exact reverse process of data
    ``N(data_mean, data_std^2 I)`` (a sensible start; the head learns a correction).
    ``sigma_clamp`` bounds the learned log-scale correction.  ``parameterization``:
    ``"gaussian"`` (that start) or ``"flow_matching"`` (the predictor's head is a velocity;
    an NTM initialised from a flow-matching model, :mod:`.flow_matching`).
    """

    def __init__(self, data_shape: Sequence[int], steps: int = 4, num_classes: int = 0, *,
                 width: int = 128, depth: int = 4, heads: int = 4,
                 patch_size: Optional[int] = None, transporter_layers: int = 4,
                 transporter_hidden: int = 128, shift: float = 1.0, t_min_max: float = 0.05,
                 label_dropout: float = 0.1, clamp: Optional[float] = 2.0,
                 mlp_ratio: float = 4.0, context_dim: int = 64, data_mean: float = 0.0,
                 data_std: float = 1.0, sigma_clamp: float = 6.0, reversible: bool = True,
                 parameterization: str = "gaussian", transporter: str = "coupling",
                 transporter_label_conditioned: bool = False):
        super().__init__()
        data_shape = schedule.check_shape_and_steps(data_shape, steps)
        t1 = schedule.first_interior_time(steps, shift)
        if not 0 <= t_min_max < t1:
            raise ValueError(f"t_min_max must lie in [0, t_1 = {t1:.4g}), got {t_min_max}")
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}")
        self.config: Dict[str, Any] = dict(
            data_shape=data_shape, steps=steps, num_classes=num_classes, width=width,
            depth=depth, heads=heads, patch_size=patch_size,
            transporter_layers=transporter_layers, transporter_hidden=transporter_hidden,
            shift=shift, t_min_max=t_min_max, label_dropout=label_dropout, clamp=clamp,
            mlp_ratio=mlp_ratio, context_dim=context_dim, data_mean=data_mean,
            data_std=data_std, sigma_clamp=sigma_clamp, reversible=reversible,
            parameterization=parameterization, transporter=transporter,
            transporter_label_conditioned=transporter_label_conditioned)
        self.data_shape, self.steps, self.num_classes = data_shape, steps, num_classes
        self.dim = math.prod(data_shape)
        self.shift, self.t_min_max, self.label_dropout = shift, t_min_max, label_dropout
        self.transporter = build_transporter(
            transporter, data_shape, layers=transporter_layers, hidden=transporter_hidden,
            num_classes=num_classes, clamp=clamp, context_dim=context_dim, reversible=reversible,
            label_conditioned=transporter_label_conditioned, patch_size=patch_size)
        self.predictor = TrajectoryPredictor(data_shape, width, depth, heads, patch_size,
                                             num_classes, mlp_ratio, data_mean, data_std,
                                             sigma_clamp, parameterization)

    # ------------------------------------------------------------------ configs
    @staticmethod
    def digits_config(conditional: bool = True) -> Dict[str, Any]:
        """Default keyword arguments for the 8x8 digits (``[1, 8, 8]``, 17 levels in [-1, 1]):
        patch 4 (4 tokens per level, 16 per sample), width 128, depth 4."""
        return dict(data_shape=(1, 8, 8), steps=4, num_classes=10 if conditional else 0,
                    width=128, depth=4, heads=4, patch_size=4, transporter_layers=4,
                    transporter_hidden=128, data_mean=-0.37, data_std=0.71)

    @staticmethod
    def toy_config() -> Dict[str, Any]:
        """Default keyword arguments for 2-D toy data (one token per level; grid shifted
        towards the data, ``shift = 0.5``: t = 0, .14, .33, .6, 1)."""
        return dict(data_shape=(2,), steps=4, num_classes=0, width=128, depth=3, heads=4,
                    patch_size=2, transporter_layers=4, transporter_hidden=64, shift=0.5,
                    data_mean=0.0, data_std=1.5)

    @classmethod
    def for_digits(cls, conditional: bool = True, **overrides) -> "NTM":
        """An NTM with :meth:`digits_config` (keyword ``overrides`` replace entries)."""
        return cls(**{**cls.digits_config(conditional), **overrides})

    @classmethod
    def for_toy(cls, **overrides) -> "NTM":
        """An NTM with :meth:`toy_config` (keyword ``overrides`` replace entries)."""
        return cls(**{**cls.toy_config(), **overrides})

    # ------------------------------------------------------------------ helpers
    def time_grid(self, batch: int, steps: Optional[int] = None,
                  t_min: Union[None, float, Tensor] = 0.0, *, device=None,
                  dtype=torch.float32) -> Tensor:
        """``t [batch, steps+1]`` on this model's schedule (``steps`` None: the trained T)."""
        return schedule.time_grid(batch, steps or self.steps, self.shift, t_min,
                                  device=device, dtype=dtype)

    def _labels(self, y: Labels, batch: int, device) -> Optional[Tensor]:
        return resolve_labels(y, batch, self.num_classes, device)

    def _check_denoiser(self, denoiser: Optional[nn.Module]) -> None:
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
                           t_min: Union[None, float, Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Draw a Markov forward trajectory of data ``x [B, *data_shape]``.

        Returns ``(X [B, T+1, *data_shape], t [B, T+1])`` with ``X[:, 0] = x_{t_0}`` and
        ``X[:, T] = x_1 ~ N(0, I)``.  ``t_min`` (``t_0``): a number or ``[B]``; None draws
        ``U[0, t_min_max]`` per sample in training mode and uses 0 in eval mode.  Random
        draws (``t_0`` first, then the noise) come from ``generator``.
        """
        self._check_data(x)
        B = x.shape[0]
        if t_min is None:
            if self.training and self.t_min_max > 0:
                t_min = torch.rand(B, generator=generator, device=x.device,
                                   dtype=x.dtype) * self.t_min_max
            else:
                t_min = 0.0
        t = self.time_grid(B, self.steps, t_min, device=x.device, dtype=x.dtype)
        X = schedule.forward_trajectory(x.reshape(B, self.dim), t, generator)
        return X.view(B, self.steps + 1, *self.data_shape), t

    # ------------------------------------------------------------------ likelihood
    def predict_levels(self, X: Tensor, t: Tensor, y: Labels = None
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Teacher-forced pass over a trajectory ``X [B, T+1, *data_shape]`` on ``t [B, T+1]``:
        ``(U [B, T, D], logdet [B, T], mu [B, T, D], log_sigma [B, T, D])`` with
        ``U[:, k] = f_T(x_{t_k}; t_k)``, its log-det, and the predicted Gaussian of
        ``U[:, k]`` (from ``U[:, k+1:]`` and ``x_1`` only).  ``D`` = flat data size."""
        return self._predict(X, t, self._labels(y, X.shape[0], X.device))

    def _predict(self, X: Tensor, t: Tensor, y: Optional[Tensor]):
        B, T = X.shape[0], X.shape[1] - 1
        D = self.dim
        if T < 1 or tuple(X.shape[2:]) != self.data_shape or t.shape != (B, T + 1):
            raise ValueError(f"X must be [B, T+1, {', '.join(map(str, self.data_shape))}] with "
                             f"T >= 1 and t [B, T+1]; got X {list(X.shape)}, t {list(t.shape)}")
        Xf = X.reshape(B, T + 1, D)
        t = t.to(X.dtype)
        rows_y = None if y is None else y.repeat_interleave(T)
        u, logdet = self.transporter(Xf[:, :T].reshape(B * T, D), t[:, :T].reshape(B * T),
                                     rows_y)
        U = u.view(B, T, D)
        mu, log_sigma = self.predictor(self.slot_inputs(U, X), t[:, :T], t[:, 1:], y)
        return U, logdet.view(B, T), mu.to(U.dtype), log_sigma.to(U.dtype)

    @staticmethod
    def slot_inputs(U: Tensor, X: Tensor) -> Tensor:
        """The predictor's input ``[B, T, D]``: slot ``k`` reads ``u_{t_{k+1}}`` (``U [B, T, D]``
        from :meth:`predict_levels`, ``x_1`` the last level of ``X [B, T+1, ...]``)."""
        B, T, D = U.shape
        return torch.cat([U[:, 1:], X.reshape(B, T + 1, D)[:, T:]], dim=1)

    def _nll(self, X: Tensor, t: Tensor, y: Optional[Tensor]) -> Tensor:
        """``L [B]`` (DESIGN.md section 1) of trajectory ``X [B, T+1, ...]`` on ``t [B, T+1]``."""
        return self.nll_from_levels(X, *self._predict(X, t, y))

    def nll_from_levels(self, X: Tensor, U: Tensor, logdet: Tensor, mu: Tensor,
                        log_sigma: Tensor) -> Tensor:
        """``L [B]`` of trajectory ``X`` from the outputs of :meth:`predict_levels` on it."""
        B, T, D = U.shape
        nll = ops.gaussian_nll(U.reshape(B, T * D), mu.reshape(B, T * D),
                               log_sigma.reshape(B, T * D))
        prior = 0.5 * X.reshape(B, T + 1, D)[:, T].pow(2).sum(dim=1)
        const = (T + 1) * D * 0.5 * math.log(2 * math.pi)
        return nll + prior - logdet.sum(dim=1) + const

    def trajectory_log_prob(self, X: Tensor, t: Tensor, y: Labels = None) -> Tensor:
        """Exact ``log p(X) [B]`` (nats) of a trajectory ``X [B, T+1, *data_shape]`` on the grid
        ``t [B, T+1]`` (any ``T >= 1``; the model's own grid is ``forward_trajectory``'s).
        No label dropout."""
        return -self._nll(X, t, self._labels(y, X.shape[0], X.device))

    def trajectory_nll(self, x: Tensor, y: Labels = None,
                       generator: Optional[torch.Generator] = None) -> Tensor:
        """The training loss: ``-log p(X) [B]`` (nats) of a forward trajectory ``X`` drawn from
        data ``x [B, *data_shape]`` (``t_0`` random in training mode, 0 in eval mode).  In
        training mode labels are replaced by the null class with probability
        ``label_dropout`` (drawn from ``generator`` after the trajectory).  One transporter
        pass over ``B*T`` rows and one predictor pass."""
        return self._nll(*self.training_trajectory(x, y, generator))

    def training_trajectory(self, x: Tensor, y: Labels = None,
                            generator: Optional[torch.Generator] = None
                            ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """The random draws of :meth:`trajectory_nll`, in its order: ``(X [B, T+1, ...],
        t [B, T+1], y [B] or None)``, a forward trajectory of ``x`` and the labels after
        label dropout (training mode only)."""
        X, t = self.forward_trajectory(x, generator)
        y = self._labels(y, x.shape[0], x.device)
        if self.training:
            y = drop_labels(y, self.label_dropout, self.num_classes, generator)
        return X, t, y

    def forward_entropy(self, t: Tensor) -> Tensor:
        """``H_q [B]`` (nats) of the forward process on grid ``t [B, T+1]``."""
        return schedule.forward_entropy(t, self.dim)

    def bits_per_dim(self, x: Tensor, y: Labels = None, levels: int = 256,
                     generator: Optional[torch.Generator] = None, *,
                     dequantize: bool = False) -> Tensor:
        """Per-sample bound ``[B]`` on bits/dim of discrete data with ``levels`` bins on [-1, 1]
        (digits: 17; 8-bit: 256): ``(L - H_q) / (D ln 2) + log2(levels / 2)`` with ``t_0 = 0``
        and one forward trajectory per sample.  Its mean over data is an upper bound on the
        bits/dim of the dequantised model.  ``x`` must already be uniformly dequantised
        (:func:`ntm_engine.data.dequantize`), unless ``dequantize=True``, which adds the
        noise here (drawn from ``generator`` before the trajectory).  No label dropout."""
        self._check_data(x)
        if dequantize:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + (noise - 0.5) * (2.0 / levels)
        X, t = self.forward_trajectory(x, generator, t_min=0.0)
        L = self._nll(X, t, self._labels(y, x.shape[0], x.device))
        bound = (L - self.forward_entropy(t).to(L.dtype)) / (self.dim * math.log(2))
        return bound + math.log2(levels / 2)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, y: Labels = None, steps: Optional[int] = None,
               temperature: float = 1.0, guidance: float = 0.0,
               generator: Optional[torch.Generator] = None, return_trajectory: bool = False,
               use_cache: bool = True, t_min: float = 0.0,
               denoiser: Optional[nn.Module] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Draw ``n`` samples ``[n, *data_shape]`` (no gradients).

        ``u_1 ~ N(0, I)``; for ``k = T-1..0``: ``u_{t_k} = mu_k + temperature * sig_k * z``;
        ``x = f_T^{-1}(u_{t_0}; t_0)``.  ``steps`` (None: the trained T) evaluates the
        predictor on another grid of the same schedule; ``t_min`` is that grid's ``t_0``
        (``0 <= t_min < t_1``).  ``denoiser`` (e.g. a :class:`~.denoiser.Denoiser` distilled
        from this model at ``t_0 = t_min``): ``x = denoiser(u_{t_0} [n, *data_shape], t_0 [n],
        y)`` replaces the transporter inverse (DESIGN.md, "Trajectory denoising").  ``y``: int or ``[n]`` labels
        (None: unconditional, the null class).  ``guidance`` ``w != 0`` (needs labels) runs
        the unconditional branch alongside (one batch of ``2n``) and combines the two
        Gaussians with :func:`~.guidance.guide`; the transporter inverse uses the labels.
        ``use_cache`` keeps the keys/values of finished slots (each step embeds one level);
        without it every step reruns all slots (unfinished inputs zero, which causality
        ignores).  Noise is drawn from ``generator``: ``u_1`` then one ``z`` per step.
        With ``return_trajectory``: returns ``(x, X)``, ``X [n, steps+1, *data_shape]`` the
        x-space levels ``x_{t_0} = x, ..., x_{t_T} = u_1`` (level 0 is the output ``x``, the
        denoised one when a ``denoiser`` is given).
        """
        p = next(self.parameters())
        device, dtype, D = p.device, p.dtype, self.dim
        T = steps or self.steps
        t1 = schedule.first_interior_time(T, self.shift)
        if not 0 <= t_min < t1:
            raise ValueError(f"sample: t_min (the t_0 of the sampling grid) must lie in "
                             f"[0, t_1 = {t1:.4g}) for {T} steps with shift {self.shift}, "
                             f"got {t_min}")
        self._check_denoiser(denoiser)
        t = self.time_grid(n, T, t_min, device=device, dtype=dtype)
        y = self._labels(y, n, device)
        guided = guidance != 0
        if guided and y is None:
            raise ValueError("guidance needs labels y (and a class-conditional NTM)")
        if guided:   # conditional rows first, then the same rows with the null label
            y_run = torch.cat([y, torch.full_like(y, self.num_classes)])
            t_run = torch.cat([t, t])
        else:
            y_run, t_run = y, t
        reps = 2 if guided else 1

        u = torch.randn(n, D, generator=generator, device=device, dtype=dtype)
        U = [None] * T + [u]
        cache = None
        for k in range(T - 1, -1, -1):
            if use_cache:
                mu, log_sigma, cache = self.predictor.step(
                    U[k + 1].repeat(reps, 1), t_run[:, k], t_run[:, k + 1], y_run, cache)
            else:
                u_in = torch.stack([torch.zeros_like(u) if U[j + 1] is None else U[j + 1]
                                    for j in range(T)], dim=1).repeat(reps, 1, 1)
                mu, log_sigma = self.predictor(u_in, t_run[:, :T], t_run[:, 1:], y_run)
                mu, log_sigma = mu[:, k], log_sigma[:, k]
            if guided:
                mu, log_sigma = guide(mu[:n], log_sigma[:n], mu[n:], log_sigma[n:], guidance)
            z = torch.randn(n, D, generator=generator, device=device, dtype=dtype)
            U[k] = mu + temperature * torch.exp(log_sigma) * z
        if denoiser is None:
            x, _ = self.transporter.inverse(U[0], t[:, 0], y)
            x = x.view(n, *self.data_shape)
        else:
            x = denoiser(U[0].view(n, *self.data_shape), t[:, 0], y)
            if tuple(x.shape) != (n, *self.data_shape):
                raise ValueError(f"sample: the denoiser returned shape {list(x.shape)}, expected "
                                 f"{[n, *self.data_shape]}")
        if not return_trajectory:
            return x
        rows_y = None if y is None else y.repeat_interleave(T)
        Xs, _ = self.transporter.inverse(torch.stack(U[:T], dim=1).reshape(n * T, D),
                                         t[:, :T].reshape(n * T), rows_y)
        X = torch.cat([Xs.view(n, T, D), U[T].unsqueeze(1)], dim=1)
        X[:, 0] = x.reshape(n, D)
        return x, X.view(n, T + 1, *self.data_shape)

    # ------------------------------------------------------------------ trajectory scores
    def trajectory_score(self, X: Tensor, t: Tensor, y: Labels = None) -> Tensor:
        """``grad_X log p(X)`` ``[B, T+1, *data_shape]`` (exact, by autograd through ``L``)."""
        with torch.enable_grad():
            Xg = X.detach().requires_grad_(True)
            L = self._nll(Xg, t, self._labels(y, X.shape[0], X.device))
            (g,) = torch.autograd.grad(L.sum(), Xg)
        return -g

    def posterior_mean(self, X: Tensor, t: Tensor, y: Labels = None) -> Tensor:
        """Tweedie estimate ``E[x | X] [B, *data_shape]`` of the clean data from a trajectory:
        ``(X_0 + [S grad_X log p(X)]_0) / (1 - t_0)`` with ``S`` the level covariance of
        :func:`~.schedule.level_covariance` over levels ``t_0..t_{T-1}``.  (With ``t_0 = 0``
        it is ``X_0``; it is informative for ``t_0 > 0``.)"""
        B, T = X.shape[0], X.shape[1] - 1
        score = self.trajectory_score(X, t, y).reshape(B, T + 1, self.dim)[:, :T]
        S = schedule.level_covariance(t.to(X.dtype))                 # [B, T, T]
        corr = torch.einsum("bj,bjd->bd", S[:, 0], score)
        x0 = X.reshape(B, T + 1, self.dim)[:, 0]
        return ((x0 + corr) / (1 - t[:, :1].to(X.dtype))).view(B, *self.data_shape)
