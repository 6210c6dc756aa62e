"""``ntm compare --train``: the three runs of a comparison, trained one after the other with
the same budget and the same ``ntm train`` options, by the trainer of ``ntm train``
(:class:`~ntm_engine.training.Trainer`; the command line plans their configs from its
``ntm train`` options, :mod:`ntm_engine.cli.compare`):

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

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from .. import checkpoint as ckpt
from ..training import NonFiniteLossError, TrainConfig, Trainer
from ..training.loop import budget_spent

__all__ = ["ROLES", "RunPlan", "train_runs", "budget_of"]

# role -> (what it is, the ntm train options that make it so)
ROLES = {
    "ntm": ("the NTM", {}),
    "fm": ("the flow-matching run (same backbone)", {"objective": "flow_matching"}),
    "ablation": ("the identity-transporter ablation", {"transporter": "none"}),
}


@dataclass
class RunPlan:
    """One run to train or resume: its ``role``, folder ``out``, config ``cfg`` and whether
    it draws sample grids and curves (``plots``)."""
    role: str
    out: Path
    cfg: TrainConfig
    plots: bool = True


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
