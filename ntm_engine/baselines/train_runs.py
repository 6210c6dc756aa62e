"""``ntm compare --train``: the three runs of a comparison, trained one after the other with
the same budget and the same ``ntm train`` options, by the trainer of ``ntm train``
(:class:`~ntm_engine.training.Trainer`, configs by :func:`ntm_engine.cli.train.train_config`):

* ``OUT/ntm`` -- the NTM;
* ``OUT/fm`` -- the flow-matching run (``--objective flow_matching``), whose backbone (width,
  depth, heads, patch size) is the NTM's predictor: the same model options build both;
* ``OUT/ablation`` -- the identity-transporter NTM (``--transporter none``).

Each run is resumed from its newest checkpoint when its folder has one, and skipped when its
budget is already spent, so a killed ``ntm compare --train`` continues where it stopped and a
finished one only compares again.  The budget is ``--iters`` and/or ``--minutes`` of training
(a run ends at whichever comes first; an iteration budget is reproducible on a busy machine, a
time budget is the same wall clock for each run).
"""
from __future__ import annotations

import argparse
import copy
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .. import checkpoint as ckpt
from ..training import ConfigError, NonFiniteLossError, TrainConfig, Trainer
from ..training.loop import budget_spent

__all__ = ["ROLES", "RunPlan", "plan_runs", "train_runs", "budget_of"]

# role -> (what it is, the ntm train options that make it so)
ROLES = {
    "ntm": ("the NTM", {}),
    "fm": ("the flow-matching run (same backbone)", {"objective": "flow_matching"}),
    "ablation": ("the identity-transporter ablation", {"transporter": "none"}),
}
# ntm train options that ntm compare sets itself: destination -> (option, why)
SET_BY_COMPARE = {
    "out": ("--out", "the runs go to --out/ntm, --out/fm, --out/ablation"),
    "resume": ("--resume", "existing runs are always resumed"),
    "objective": ("--objective", "each run has its own"),
    "init_from": ("--init-from", "each run starts from scratch"),
    "dataset": ("--dataset", "give it to ntm compare"),
    "class_conditional": ("--class-conditional", "give it to ntm compare"),
    "image_size": ("--image-size", "give it to ntm compare"),
    "channels": ("--channels", "give it to ntm compare"),
    "iters": ("--iters", "give the budget to ntm compare"),
    "minutes": ("--minutes", "give the budget to ntm compare"),
    "device": ("--device", "give it to ntm compare"),
    "threads": ("--threads", "give it to ntm compare"),
    "no_progress": ("--no-progress", "give it to ntm compare"),
}
# ntm compare options handed to every run as they are
SHARED = ("dataset", "image_size", "channels", "iters", "minutes")


@dataclass
class RunPlan:
    """One run to train or resume: its ``role``, folder ``out``, config ``cfg`` and whether
    it draws sample grids and curves (``plots``)."""
    role: str
    out: Path
    cfg: TrainConfig
    plots: bool = True


def train_parser() -> argparse.ArgumentParser:
    """The parser of ``ntm train`` (its options are those of ``--train-options``)."""
    from ..cli import train   # deferred: the CLI imports this package's parser side
    sub = argparse.ArgumentParser().add_subparsers()
    train.add_parser(sub)
    parser = sub.choices["train"]
    parser.prog = "ntm compare --train-options"
    return parser


def plan_runs(args, out: Path, error: Callable[[str], None]) -> List[RunPlan]:
    """The configs of the three runs (:data:`ROLES`) in ``out`` from ``ntm compare``'s
    ``args`` (``dataset``, ``class_conditional``, ``image_size``, ``channels``, ``iters``,
    ``minutes``, ``train_options``: a string of further ``ntm train`` options), each the one
    stored in its folder when it has a checkpoint (options that define a run must then
    agree: :class:`~ntm_engine.training.ConfigError` otherwise).  ``error(message)`` reports
    (and does not return from) an option of :data:`SET_BY_COMPARE` in ``train_options``."""
    from ..cli.train import train_config
    parser = train_parser()
    given = parser.parse_args(shlex.split(args.train_options or ""))
    for dest, (option, why) in SET_BY_COMPARE.items():
        if getattr(given, dest) != parser.get_default(dest):
            error(f"--train-options must not contain {option} ({why}), got "
                  f"{args.train_options!r}")
    plans = []
    for role, (_, overrides) in ROLES.items():
        ns = copy.copy(given)
        for k in SHARED:
            setattr(ns, k, getattr(args, k))
        ns.class_conditional = True if args.class_conditional else None
        ns.out, ns.resume = str(out / role), True
        for k, v in overrides.items():
            setattr(ns, k, v)
        try:
            cfg = train_config(ns)
        except ConfigError as e:
            raise ConfigError(f"{ROLES[role][0]} ({out / role}): {e}") from e
        plans.append(RunPlan(role, out / role, cfg, plots=not given.no_plots))
    return plans


def budget_of(flat) -> str:
    """``"iters=N, minutes=M"``: the budget of a flat config (``None``: no such limit)."""
    return f"iters={flat.get('iters')}, minutes={flat.get('minutes')}"


def finished(plan: RunPlan) -> Optional[ckpt.Checkpoint]:
    """The newest checkpoint of the run if its budget is spent, else None."""
    latest = ckpt.load_latest(plan.out, log=lambda m: None)
    if latest is None:
        return None
    spent = budget_spent(plan.cfg.optim, latest.step, float(latest.state.get("elapsed_s", 0.0)))
    return latest if spent else None


def train_runs(plans: List[RunPlan], *, device, log: Callable[[str], None],
               progress: bool = True) -> Optional[int]:
    """Train (or resume) each planned run in turn, skipping finished ones.  Returns None when
    all are finished, else the exit status of a run stopped by a signal (``128 + N``; the runs
    after it are not started).  Too many non-finite losses end it with a SystemExit that
    names the run."""
    for p in plans:
        what = ROLES[p.role][0]
        done = finished(p)
        if done is not None:
            log(f"ntm compare: {what} in {p.out} is finished (step {done.step}, "
                f"{float(done.state.get('elapsed_s', 0.0)):.0f} s of training); not retrained")
            continue
        log(f"ntm compare: training {what} into {p.out} ({budget_of(p.cfg.to_dict())})")
        trainer = Trainer(p.cfg, p.out, resume=True, device=device, progress=progress, log=log,
                          plots=p.plots)
        try:
            summary = trainer.run()
        except NonFiniteLossError as e:
            raise SystemExit(f"ntm compare: {what} in {p.out}: {e}")
        if summary["reason"].startswith("signal"):
            return 128 + int(summary["reason"].split()[1])
    return None
