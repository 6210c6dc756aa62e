"""``ntm compare``: an NTM run against diffusers' flow-matching schedulers on a flow-matching
run (and the identity-transporter ablation), quality against steps and time, of existing runs
or of runs it trains first (``--train``); the options and the command are
:mod:`ntm_engine.baselines.cli`'s, the run loading and device are the CLI's."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Tuple, Union

from torch import nn

from ..baselines.cli import add_compare_arguments, cmd_compare
from ..checkpoint import Checkpoint
from ..training import load_run, upgrade
from .common import device_named, log


def add_parser(sub) -> None:
    c = sub.add_parser(
        "compare", help="NTM against diffusers' schedulers on a flow-matching run",
        description="Sample --n images from each sampler (diffusers' flow-matching schedulers "
        "on the --fm run at each --steps; the NTM at its trained steps; the --ablation run), "
        "time them and rate them like `ntm eval`; write quality_vs_steps.{md,png,json}. "
        "With --train --dataset D: first train (or resume) the three runs with one budget "
        "into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_compare_arguments(c)
    c.set_defaults(handler=run)


def load_model(path: Union[str, Path], device, use_ema: bool = True
               ) -> Tuple[nn.Module, Checkpoint]:
    """``(model, checkpoint)`` of a run (:func:`~ntm_engine.training.load_run`), the checkpoint's
    config brought to the current version (older runs lack keys the comparison reads)."""
    r = load_run(path, device, ema=use_ema, log=log)
    ck = r.checkpoint
    state = {**ck.state, "config": upgrade(ck.config)}
    return r.model, Checkpoint(path=ck.path, step=ck.step, model=ck.model, ema=ck.ema,
                               state=state)


def run(args, parser) -> int:
    return cmd_compare(args, parser, load_model=load_model, device_of=device_named, log=log)
