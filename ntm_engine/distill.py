"""Self-distillation of a trained NTM into a light denoiser (DESIGN.md section 1, "Trajectory
denoising and self-distillation").

The frozen teacher (an NTM, EMA weights) draws forward trajectories of real training data on
its grid with a fixed ``t_0 = t_d > 0``.  The regression target is its Tweedie posterior mean
``E[x | X]`` (:meth:`~ntm_engine.models.NTM.posterior_mean`, exact through the trajectory
score), the input the transporter's output at level 0, ``u_{t_0} = f_T(x_{t_0}; t_0, y)``
(:func:`distillation_batch`).  A :class:`~ntm_engine.models.Denoiser` ``g(u_{t_0}, t_d, y)``
learns it by mean squared error; at sampling time it replaces the transporter inverse
(``NTM.sample(..., t_min=t_d, denoiser=g)``).  Class-conditional teachers: labels are
replaced by the null class with probability ``label_dropout`` (inputs *and* targets then come
from the teacher's unconditional branch), so the denoiser also serves unconditional sampling.
The targets cost about 20 denoiser updates (one teacher forward + backward over ``B*T`` rows),
so each batch of targets serves ``updates_per_batch`` updates (default 8); on the digits the
regression is limited by updates, not by fresh data.

The loop (:class:`Distiller`) is :class:`ntm_engine.run_loop.RunLoop`'s, shared with NTM
training: batches as a function of ``(seed, step)`` (:class:`~ntm_engine.train.DataSource`),
per-step seeds, warm-up + cosine learning rate, EMA, RNG states, ``metrics.jsonl``, the folder
lock and the atomic, verified checkpoints of :mod:`ntm_engine.checkpoint` (the config is a
JSON-able dict, here with ``kind = "ntm-denoiser"``).  A run resumed from the checkpoint of
step ``s`` repeats bit for bit (same machine and threads) what an uninterrupted run does after
``s``, unless a ``minutes`` budget shapes the learning rate.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import checkpoint as ckpt
from .data import DIGITS_LEVELS, dequantize
from .models import Denoiser, schedule
from .models.embedding import drop_labels, resolve_labels
from .run_loop import (EMA, ConfigError, RunLoop, derive_seed, device_generator, learning_rate,
                       validate_loop_options)
from .train import DataSource, config_differences, test_data

__all__ = ["KIND", "DISTILL_DEFAULTS", "DistillBatch", "distillation_batch", "make_distill_config",
           "validate_distill_config", "Distiller", "load_denoiser", "check_denoiser_fits"]

KIND = "ntm-denoiser"
DISTILL_DEFAULTS: Dict[str, Any] = dict(
    batch_size=128, updates_per_batch=8, lr=2e-3, min_lr_ratio=0.05, warmup=50,
    weight_decay=0.0, beta1=0.9,
    beta2=0.99, ema_decay=0.995, grad_clip=1.0, seed=0, iters=None, minutes=None,
    log_every=25, eval_every=250, ckpt_every=100, keep=2, max_nonfinite=20, eval_n=1000,
    eval_batch=256,
)
# entries that define a distillation run: a resumed run must agree on these
IDENTITY_KEYS = ("kind", "teacher", "teacher_model", "dataset", "class_conditional", "t_min",
                 "label_dropout", "denoiser", "batch_size", "seed")


# ----------------------------------------------------------------------------- targets

@dataclass
class DistillBatch:
    """One regression batch: input ``u [B, *shape]`` at ``t0 [B]`` with labels ``y [B]`` (or
    None), target ``E[x | X] [B, *shape]``, and the trajectory's level 0 ``x_t0 [B, *shape]``
    (what the transporter inverse of ``u`` gives back)."""
    u: Tensor
    t0: Tensor
    y: Optional[Tensor]
    target: Tensor
    x_t0: Tensor


@torch.no_grad()
def distillation_batch(teacher: nn.Module, x: Tensor, y: Optional[Tensor], t_min: float,
                       generator: Optional[torch.Generator] = None,
                       label_dropout: float = 0.0) -> DistillBatch:
    """Inputs and targets for data ``x [B, *shape]`` (labels ``y [B]`` or None).

    A forward trajectory ``X`` on the teacher's grid with ``t_0 = t_min`` (noise from
    ``generator``); then, for a conditional teacher, labels dropped to the null class with
    probability ``label_dropout`` (drawn from ``generator`` after the trajectory); the target
    ``teacher.posterior_mean(X, t, y)`` (its own autograd for the score; everything else
    without gradients) and the input ``u_{t_0} = f_T(x_{t_0}; t_0, y)``.
    """
    X, t = teacher.forward_trajectory(x, generator, t_min=t_min)
    y = resolve_labels(y, x.shape[0], teacher.num_classes, x.device)
    y = drop_labels(y, label_dropout, teacher.num_classes, generator)
    target = teacher.posterior_mean(X, t, y)
    B = x.shape[0]
    u, _ = teacher.transporter(X[:, 0].reshape(B, teacher.dim), t[:, 0], y)
    return DistillBatch(u.view_as(x), t[:, 0], y, target, X[:, 0])


# ----------------------------------------------------------------------------- config

def make_distill_config(teacher_ck: ckpt.Checkpoint, t_min: Optional[float] = None,
                        denoiser: Optional[Dict[str, Any]] = None,
                        label_dropout: Optional[float] = None, **train) -> Dict[str, Any]:
    """A full, validated distillation config for the teacher checkpoint ``teacher_ck``.

    ``t_min`` (``t_d``; None: the teacher's ``t_min_max``), ``denoiser``: keyword arguments of
    :class:`~ntm_engine.models.Denoiser` (shape and classes come from the teacher),
    ``label_dropout`` (None: the teacher's; 0 for unconditional teachers), ``train``: entries
    of :data:`DISTILL_DEFAULTS`."""
    tcfg = teacher_ck.config
    if tcfg.get("kind") == KIND or "model" not in tcfg:
        raise ConfigError(f"teacher {teacher_ck.path} is not an NTM run checkpoint "
                          f"(its config has kind {tcfg.get('kind')!r})")
    if tcfg.get("objective", "ntm") != "ntm":
        raise ConfigError(f"teacher {teacher_ck.path} is a {tcfg['objective']} run; distillation "
                          "needs an NTM (its posterior mean comes from the trajectory likelihood)")
    unknown = set(train) - set(DISTILL_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown distillation options: {sorted(unknown)}")
    m = tcfg["model"]
    conditional = int(m.get("num_classes", 0)) > 0
    if t_min is None:
        t_min = float(m["t_min_max"])
    if label_dropout is None:
        label_dropout = float(m.get("label_dropout", 0.0)) if conditional else 0.0
    try:
        den = Denoiser(m["data_shape"], int(m.get("num_classes", 0)), **(denoiser or {})).config
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid denoiser configuration: {e}") from e
    cfg = dict(DISTILL_DEFAULTS)
    cfg.update({k: v for k, v in train.items() if v is not None})
    cfg.update(kind=KIND, dataset=tcfg["dataset"], class_conditional=conditional,
               teacher={"checkpoint": str(Path(teacher_ck.path).resolve()),
                        "step": int(teacher_ck.step)},
               teacher_model=json.loads(json.dumps(m)), t_min=float(t_min),
               label_dropout=float(label_dropout), denoiser=den)
    validate_distill_config(cfg)
    return cfg


def validate_distill_config(cfg: Dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the option, what it must be and what it is."""
    tm = cfg["teacher_model"]
    t1 = schedule.first_interior_time(int(tm["steps"]), float(tm["shift"]))
    t = cfg["t_min"]
    if not 0 < t < t1:
        why = (" (at t_0 = 0 the posterior mean is x_{t_0} itself: nothing to distil)"
               if t == 0 else "")
        raise ConfigError(f"--t-min (t_d, the t_0 of the distillation grid) must lie in "
                          f"(0, t_1 = {t1:.4g}) for the teacher's {cfg['teacher_model']['steps']} "
                          f"steps, got {t}{why}")
    checks = [
        (0 <= cfg["label_dropout"] < 1, f"label_dropout must lie in [0, 1), got "
         f"{cfg['label_dropout']}"),
        (cfg["class_conditional"] or cfg["label_dropout"] == 0,
         f"label_dropout > 0 needs a class-conditional teacher, got label_dropout="
         f"{cfg['label_dropout']} for an unconditional one"),
        (cfg["updates_per_batch"] >= 1,
         f"--updates-per-batch must be >= 1, got {cfg['updates_per_batch']}"),
        (cfg["eval_n"] >= 0, f"eval_n must be >= 0, got {cfg['eval_n']}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    validate_loop_options(cfg)


def _check_teacher(teacher: nn.Module, cfg: Dict[str, Any]) -> None:
    m = cfg["teacher_model"]
    if (tuple(teacher.data_shape) != tuple(m["data_shape"])
            or teacher.num_classes != int(m.get("num_classes", 0))):
        raise ConfigError(f"the teacher model (data_shape {list(teacher.data_shape)}, "
                          f"num_classes {teacher.num_classes}) is not the one of the config "
                          f"(data_shape {list(m['data_shape'])}, num_classes "
                          f"{m.get('num_classes', 0)})")


# ----------------------------------------------------------------------------- the loop

class Distiller(RunLoop):
    """One distillation run in folder ``out`` from the frozen ``teacher`` (an NTM; put in eval
    mode, its parameters frozen with ``requires_grad_(False)``); the loop itself is
    :class:`~ntm_engine.run_loop.RunLoop`'s.

    ``resume=True`` continues from the newest valid checkpoint in ``out`` (corrupt ones are
    reported and moved aside); ``fault_nonfinite_steps`` (1-based, as logged): steps whose
    loss is forced to NaN (tests of the skipping).
    """

    kind = KIND
    desc = "distill"

    def __init__(self, cfg: Dict[str, Any], out, teacher: nn.Module, *, resume: bool = False,
                 device=None, progress: bool = True, log: Optional[Callable[[str], None]] = None,
                 fault_nonfinite_steps=()):
        super().__init__(out, device=device, progress=progress, log=log,
                         fault_nonfinite_steps=fault_nonfinite_steps)
        validate_distill_config(cfg)
        _check_teacher(teacher, cfg)
        try:
            self._init(cfg, teacher, resume)
        except BaseException:
            self.close()
            raise

    def _init(self, cfg: Dict[str, Any], teacher: nn.Module, resume: bool) -> None:
        resumed = self._open_run_folder(cfg, resume)
        if cfg["t_min"] > cfg["teacher_model"]["t_min_max"]:
            self.log(f"warning: t_d = {cfg['t_min']} is above the teacher's t_min_max = "
                     f"{cfg['teacher_model']['t_min_max']}: the teacher never trained there")
        self.cfg = cfg
        torch.manual_seed(derive_seed(cfg["seed"], 0, "init"))
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.model = Denoiser(**cfg["denoiser"]).to(self.device).train()
        self.ema = EMA(self.model, cfg["ema_decay"])
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg["lr"],
                                     betas=(cfg["beta1"], cfg["beta2"]),
                                     weight_decay=cfg["weight_decay"])
        self.data = DataSource(cfg, device=self.device)
        self._eval_set: Optional[List[Tuple[DistillBatch, Tensor]]] = None
        self._begin(cfg, resumed)

    def config_differences(self, stored: Dict[str, Any], requested: Dict[str, Any]) -> List[str]:
        return config_differences(stored, requested, IDENTITY_KEYS)

    def _generator(self, seed: int) -> torch.Generator:
        return device_generator(self.device, seed)

    # -------------------------------------------------------------- steps
    def train_step(self) -> Dict[str, Any]:
        """One iteration (``self.step`` -> ``self.step + 1``); returns its record."""
        cfg, step = self.cfg, self.step
        torch.manual_seed(derive_seed(cfg["seed"], step, "global"))
        x, y = self.data.batch(step)
        batch = distillation_batch(self.teacher, x, y, cfg["t_min"],
                                   self._generator(derive_seed(cfg["seed"], step, "model")),
                                   cfg["label_dropout"])
        lr = learning_rate(cfg, step, self.elapsed_s)
        for group in self.opt.param_groups:
            group["lr"] = lr
        clip = cfg["grad_clip"] if cfg["grad_clip"] is not None else float("inf")
        K = cfg["updates_per_batch"]
        fresh_loss, gnorm, finite = float("nan"), float("nan"), True
        for j in range(K):   # the targets cost ~20 denoiser updates: each batch serves K
            loss = (self.model(batch.u, batch.t0, batch.y) - batch.target).pow(2).mean()
            if j == 0:
                if step + 1 in self.fault_steps:
                    loss = loss * float("nan")
                fresh_loss = float(loss.detach())   # before any update on this batch
                finite = math.isfinite(fresh_loss)
            if finite:   # (a non-finite loss of a later update shows in the gradient norm)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
                finite = math.isfinite(gnorm)
            if not finite:
                self.opt.zero_grad(set_to_none=True)
                break
            self.opt.step()
            self.ema.update(self.model, step * K + j)
        if finite:
            self.nonfinite_run = 0
        else:
            self.skipped += 1
            self.nonfinite_run += 1
        self.step = step + 1
        return {"step": self.step, "lr": lr, "loss": fresh_loss, "grad_norm": gnorm,
                "finite": finite}

    # -------------------------------------------------------------- evaluation
    def eval_set(self) -> List[Tuple[DistillBatch, Tensor]]:
        """Fixed held-out batches ``(DistillBatch, clean x)``: the test split (digits:
        dequantised with a fixed seed; toys: fixed samples), at most ``eval_n`` items, labels
        kept (no dropout).  Targets are computed once."""
        if self._eval_set is None:
            cfg = self.cfg
            x, y = test_data(cfg)
            x, y = x[:cfg["eval_n"]], (None if y is None else y[:cfg["eval_n"]])
            g = torch.Generator().manual_seed(derive_seed(cfg["seed"], 0, "eval_data"))
            if cfg["dataset"] == "digits":
                x = dequantize(x, DIGITS_LEVELS, generator=g)
            gm = self._generator(derive_seed(cfg["seed"], 0, "eval_model"))
            self._eval_set = []
            for i in range(0, len(x), cfg["eval_batch"]):
                xb = x[i:i + cfg["eval_batch"]].to(self.device)
                yb = None if y is None else y[i:i + cfg["eval_batch"]].to(self.device)
                self._eval_set.append((distillation_batch(self.teacher, xb, yb, cfg["t_min"],
                                                          gm), xb))
        return self._eval_set

    @torch.no_grad()
    def evaluate(self) -> Dict[str, Any]:
        """Held-out mean squared errors (per element) of the EMA denoiser: ``test_mse`` vs the
        teacher's targets, ``test_mse_transporter`` of the transporter inverse ``x_{t_0}`` (no
        denoising) vs the targets; ``test_mse_data`` of the denoiser and
        ``test_mse_data_teacher`` of the targets vs the clean data."""
        sums = dict(test_mse=0.0, test_mse_transporter=0.0, test_mse_data=0.0,
                    test_mse_data_teacher=0.0)
        n = 0
        for b, x in self.eval_set():
            pred = self.ema.model(b.u, b.t0, b.y)
            sums["test_mse"] += float((pred - b.target).pow(2).sum())
            sums["test_mse_transporter"] += float((b.x_t0 - b.target).pow(2).sum())
            sums["test_mse_data"] += float((pred - x).pow(2).sum())
            sums["test_mse_data_teacher"] += float((b.target - x).pow(2).sum())
            n += b.target.numel()
        rec = {"type": "eval", "step": self.step,
               **{k: v / max(n, 1) for k, v in sums.items()}, "test_elements": n}
        self.last_eval = {k: v for k, v in rec.items() if isinstance(v, (int, float))}
        self._write_metrics(rec)
        return rec

    def eval_summary(self, rec: Dict[str, Any]) -> str:
        return (f"test mse {rec['test_mse']:.4g} (transporter inverse "
                f"{rec['test_mse_transporter']:.4g})")

    def _log_extras(self, rec: Dict[str, Any], mean_loss: float
                    ) -> Tuple[Dict[str, Any], Dict[str, str]]:
        post = {}
        if "test_mse" in self.last_eval:
            post["test_mse"] = f"{self.last_eval['test_mse']:.3g}"
        return {}, post


# ----------------------------------------------------------------------------- loading

def load_denoiser(path, device=None, use_ema: bool = True, log=None
                  ) -> Tuple[Denoiser, ckpt.Checkpoint]:
    """``(denoiser in eval mode, checkpoint)`` from a distillation folder or checkpoint."""
    ck = ckpt.resolve(path, log=log)
    if ck.config.get("kind") != KIND:
        what = ("a flow-matching run" if ck.config.get("objective") == "flow_matching"
                else "an NTM training run")
        raise ConfigError(f"--denoiser {path}: {ck.path} is not a denoiser checkpoint (made by "
                          f"`ntm distill`); it is {what}")
    den = Denoiser(**ck.config["denoiser"])
    weights = ck.ema if (use_ema and ck.ema is not None) else ck.model
    try:
        den.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"checkpoint {ck.path} does not fit the denoiser of its config: {e}")
    return den.to(device or "cpu").eval(), ck


def check_denoiser_fits(teacher_ck: ckpt.Checkpoint, denoiser_ck: ckpt.Checkpoint,
                        log: Callable[[str], None]) -> None:
    """Refuse a denoiser made for another kind of model (data shape, labels); warn when it was
    distilled from another teacher checkpoint or model configuration."""
    tm, dm = teacher_ck.config["model"], denoiser_ck.config["denoiser"]
    if list(tm["data_shape"]) != list(dm["data_shape"]):
        raise ConfigError(f"--denoiser {denoiser_ck.path} is for data of shape "
                          f"{list(dm['data_shape'])}, the model {teacher_ck.path} for "
                          f"{list(tm['data_shape'])}")
    if int(tm.get("num_classes", 0)) != int(dm["num_classes"]):
        raise ConfigError(f"--denoiser {denoiser_ck.path}: label mismatch: the denoiser has "
                          f"num_classes={dm['num_classes']}, the model {teacher_ck.path} "
                          f"num_classes={tm.get('num_classes', 0)}")
    distilled_from = denoiser_ck.config["teacher"]["checkpoint"]
    if Path(distilled_from) != Path(teacher_ck.path).resolve():
        log(f"warning: the denoiser was distilled from {distilled_from}, not from "
            f"{teacher_ck.path}")
    diffs = config_differences({"model": denoiser_ck.config["teacher_model"]}, {"model": tm},
                               ("model",))
    if diffs:
        log("warning: the denoiser's teacher had another model configuration: "
            + "; ".join(diffs))
