"""The configuration of a self-distillation run (``kind = "ntm-denoiser"``):
:class:`DistillConfig`, its flat ``config.json`` form and the one place where older forms are
upgraded (:meth:`DistillConfig.from_dict`); built from a teacher checkpoint by
:func:`make_distill_config`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from .. import checkpoint as ckpt
from ..models import Denoiser, schedule
from ..models.predictor import default_patch_size
from .config import upgrade as upgrade_train
from .errors import ConfigError
from .sections import (DataConfig, OptimConfig, RunConfig, RunConfigProtocol, check,
                       differences, field_names, flatten, plain, reject_unknown, section_from)

KIND = "ntm-denoiser"
DISTILL_VERSION = 2
DISTILL_DEFAULTS: Dict[str, Any] = {
    **flatten(OptimConfig(iters=1, lr=2e-3, warmup=50, weight_decay=0.0, ema_decay=0.995)),
    "iters": None, **flatten(RunConfig(ckpt_every=100, eval_batch=256)),
    "updates_per_batch": 8, "eval_n": 1000,
}
# entries that define a distillation run: a resumed run must agree on these
IDENTITY_KEYS = ("kind", "teacher", "teacher_model", "dataset", "class_conditional", "t_min",
                 "label_dropout", "denoiser", "batch_size", "seed")


def teacher_first_time(tm: Mapping[str, Any]) -> float:
    """``t_1`` of the grid the distiller draws on: the teacher's default (smallest) ``T``, its
    shift resolved (``"auto"`` from the predictor's tokens per level, as the model does)."""
    shape = list(tm["data_shape"])
    p = tm.get("patch_size") or default_patch_size(shape)
    tokens = (shape[1] // p) * (shape[2] // p) if len(shape) == 3 else math.prod(shape) // p
    return schedule.first_interior_time(schedule.step_counts(tm["steps"])[0],
                                        schedule.resolve_shift(tm.get("shift"), tokens))


@dataclass(frozen=True)
class DistillConfig(RunConfigProtocol):
    """A denoiser trained on the teacher's posterior means at ``t_0 = t_min`` (``t_d``).
    ``teacher``: ``{"checkpoint": path, "step": n}``; ``teacher_model``: the teacher's model
    options; ``denoiser``: keyword arguments of :class:`~ntm_engine.models.Denoiser`;
    ``updates_per_batch``: denoiser updates per batch of targets; ``eval_n``: held-out items."""
    data: DataConfig
    teacher: Dict[str, Any]
    teacher_model: Dict[str, Any]
    t_min: float
    label_dropout: float
    denoiser: Dict[str, Any]
    optim: OptimConfig
    run: RunConfig
    updates_per_batch: int = 8
    eval_n: int = 1000

    def __post_init__(self):
        tm = self.teacher_model
        t1 = teacher_first_time(tm)
        t = self.t_min
        why = (" (at t_0 = 0 the posterior mean is x_{t_0} itself: nothing to distil)"
               if t == 0 else "")
        check(0 < t < t1, f"--t-min (t_d, the t_0 of the distillation grid) must lie in "
              f"(0, t_1 = {t1:.4g}) for the teacher's {tm['steps']} steps, got {t}{why}")
        checks = [
            (0 <= self.label_dropout < 1,
             f"label_dropout must lie in [0, 1), got {self.label_dropout}"),
            (self.data.conditioned or self.label_dropout == 0,
             f"label_dropout > 0 needs a conditional teacher (labels or condition tokens), "
             f"got label_dropout="
             f"{self.label_dropout} for an unconditional one"),
            (isinstance(self.updates_per_batch, int) and self.updates_per_batch >= 1,
             f"--updates-per-batch must be >= 1, got {self.updates_per_batch}"),
            (isinstance(self.eval_n, int) and self.eval_n >= 0,
             f"eval_n must be >= 0, got {self.eval_n}"),
        ]
        for ok, msg in checks:
            check(ok, msg)

    @property
    def kind(self) -> str:
        return KIND

    def to_dict(self) -> Dict[str, Any]:
        out = flatten(self.optim, self.run)
        out.update(updates_per_batch=self.updates_per_batch, eval_n=self.eval_n, kind=KIND,
                   **flatten(self.data), teacher=plain(self.teacher),
                   teacher_model=plain(self.teacher_model), t_min=self.t_min,
                   label_dropout=self.label_dropout, denoiser=plain(self.denoiser),
                   version=DISTILL_VERSION)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DistillConfig":
        """A validated config from its flat form (version 1: written before versions were
        recorded; its keys were the same)."""
        flat = plain(dict(d))
        version = flat.pop("version", 1)
        check(isinstance(version, int) and 1 <= version <= DISTILL_VERSION,
              f"distillation config version must be in [1, {DISTILL_VERSION}], got {version!r}")
        check(flat.get("kind") == KIND, f"kind must be {KIND!r}, got {flat.get('kind')!r}")
        flat = {**DISTILL_DEFAULTS, **flat}
        reject_unknown(flat, KNOWN_KEYS, "distillation")
        return cls(data=section_from(DataConfig, flat), teacher=flat["teacher"],
                   teacher_model=flat["teacher_model"], t_min=flat["t_min"],
                   label_dropout=flat["label_dropout"], denoiser=flat["denoiser"],
                   optim=section_from(OptimConfig, flat), run=section_from(RunConfig, flat),
                   updates_per_batch=flat["updates_per_batch"], eval_n=flat["eval_n"])



KNOWN_KEYS = (set(DISTILL_DEFAULTS) | set(field_names(DataConfig))
              | {"kind", "teacher", "teacher_model", "t_min", "label_dropout", "denoiser"})


def _teacher_model(teacher_ck: ckpt.Checkpoint) -> Dict[str, Any]:
    """The model options of an NTM teacher checkpoint (as stored), or a :class:`ConfigError`."""
    tcfg = teacher_ck.config
    if tcfg.get("kind") == KIND or "model" not in tcfg:
        raise ConfigError(f"teacher {teacher_ck.path} is not an NTM run checkpoint "
                          f"(its config has kind {tcfg.get('kind')!r})")
    if upgrade_train(tcfg)["objective"] != "ntm":
        raise ConfigError(f"teacher {teacher_ck.path} is a {tcfg['objective']} run; distillation "
                          "needs an NTM (its posterior mean comes from the trajectory likelihood)")
    return tcfg["model"]


def make_distill_config(teacher_ck: ckpt.Checkpoint, *, t_min: Optional[float] = None,
                        denoiser: Optional[Dict[str, Any]] = None,
                        label_dropout: Optional[float] = None, **train) -> DistillConfig:
    """A full, validated distillation config for the teacher checkpoint ``teacher_ck``.

    ``t_min`` (``t_d``; None: the teacher's ``t_min_max``), ``denoiser``: keyword arguments of
    :class:`~ntm_engine.models.Denoiser` (shape and classes come from the teacher),
    ``label_dropout`` (None: the teacher's; 0 for unconditional teachers), ``train``: flat
    entries of :data:`DISTILL_DEFAULTS`."""
    m = _teacher_model(teacher_ck)
    reject_unknown(train, set(DISTILL_DEFAULTS), "distillation")
    conditional = int(m.get("num_classes", 0)) > 0
    cond = teacher_ck.config.get("cond")
    if t_min is None:
        t_min = float(m["t_min_max"])
    if label_dropout is None:
        label_dropout = float(m.get("label_dropout", 0.0)) if conditional or cond else 0.0
    try:
        den = Denoiser(m["data_shape"], int(m.get("num_classes", 0)), **(denoiser or {})).config
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid denoiser configuration: {e}") from e
    flat = {**DISTILL_DEFAULTS, **{k: v for k, v in train.items() if v is not None}}
    flat.update(kind=KIND, dataset=teacher_ck.config["dataset"], class_conditional=conditional,
                cond=cond,
                teacher={"checkpoint": str(Path(teacher_ck.path).resolve()),
                         "step": int(teacher_ck.step)},
                teacher_model=m, t_min=float(t_min), label_dropout=float(label_dropout),
                denoiser=den)
    return DistillConfig.from_dict(flat)


def distill_differences(a, b, keys=IDENTITY_KEYS) -> List[str]:
    """Readable differences of the run-defining entries of two distillation configs."""
    a, b = (c.to_dict() if isinstance(c, DistillConfig) else plain(dict(c)) for c in (a, b))
    return differences(a, b, keys)
