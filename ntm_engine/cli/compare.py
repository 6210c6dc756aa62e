"""``ntm compare``: an NTM run against diffusers' schedulers on a flow-matching run (and the
identity-transporter ablation), quality against steps and time
(:mod:`ntm_engine.compare`); existing runs (``NTM_RUN --fm FM_RUN [--ablation RUN]``) or, with
``--train --dataset D``, the three runs planned from ``ntm train``'s options (:func:`plan_runs`)
and trained (or resumed) first with one budget (:mod:`ntm_engine.compare.train_runs`).

:func:`add_compare_arguments` and :func:`cmd_compare` serve ``ntm compare`` and
``bench/compare_samplers.py`` (its own parser).  Only the command itself imports diffusers.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import shlex
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..checkpoint import Checkpoint
from ..compare.names import SCHEDULER_NAMES, STEPS
from ..compare.quality import METRICS, rating_for
from ..compare.train_runs import ROLES, RunPlan, budget_of, train_runs
from ..machine import cpu_name
from ..models.flow_matching import architecture_differences
from ..training import ConfigError, load_run, upgrade
from . import train
from .common import HelpFormatter, device_named, int_list, log


def _int_list(s: str) -> List[int]:
    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, "
                                         f"got {s!r}")
    return vals


def _seed_list(s: str) -> List[int]:
    vals = int_list(s)
    if not vals or len(set(vals)) != len(vals):
        raise argparse.ArgumentTypeError(f"expected an integer or distinct comma-separated "
                                         f"integers, got {s!r}")
    return vals


def _role_iters(s: str) -> Dict[str, int]:
    """``N`` (every run) or ``ntm=N,fm=N,ablation=N`` (each run its own, e.g. the same
    wall-clock by measured per-iteration costs) -> role -> iterations."""
    try:
        if "=" not in s:
            out = dict.fromkeys(ROLES, int(s))
        else:
            out = {k.strip(): int(v) for k, v in (kv.split("=") for kv in s.split(","))}
    except ValueError:
        out = {}
    if sorted(out) != sorted(ROLES) or min(out.values()) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or {','.join(f'{r}=N' for r in ROLES)}, got {s!r}")
    return out


def _temperature_list(s: str) -> List[float]:
    try:
        vals = [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        vals = []
    if (not vals or len(set(vals)) != len(vals)
            or not all(math.isfinite(v) and v >= 0 for v in vals)):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated numbers >= 0, "
                                         f"got {s!r}")
    return vals


def _name_list(s: str) -> List[str]:
    vals = [v.strip() for v in s.split(",") if v.strip()]
    bad = [v for v in vals if v not in SCHEDULER_NAMES]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"expected comma-separated names among "
                                         f"{sorted(SCHEDULER_NAMES)}, got {s!r}")
    return vals


def _positive(kind):
    """An argparse type: ``kind(s)`` (int or float), finite and > 0."""
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            v = None
        if v is None or not (v > 0 and math.isfinite(v)):
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what} > 0, got {s!r}")
        return v
    parse.__name__ = kind.__name__
    return parse


# the options of --train; none of them applies to existing runs
TRAIN_ONLY = {"dataset": "--dataset", "class_conditional": "--class-conditional",
              "image_size": "--image-size", "channels": "--channels", "iters": "--iters",
              "minutes": "--minutes", "train_options": "--train-options"}


def add_compare_arguments(p) -> None:
    """The options of ``ntm compare`` on the (sub-)parser ``p``."""
    p.add_argument("ntm", nargs="?", default=None,
                   help="NTM run folder, its checkpoints/ folder, or a checkpoint (not with "
                   "--train)")
    p.add_argument("--fm", default=None, help="flow-matching run (--objective flow_matching)"
                   " with the same data and backbone (needed without --train)")
    p.add_argument("--ablation", default=None,
                   help="identity-transporter NTM run (--transporter none), optional")
    p.add_argument("--n", type=int, default=1000, help="samples per sampler")
    p.add_argument("--steps", type=_int_list, default=list(STEPS),
                   help="scheduler step counts, comma-separated")
    p.add_argument("--schedulers", type=_name_list, default=list(SCHEDULER_NAMES),
                   help=f"comma-separated, among {','.join(SCHEDULER_NAMES)}")
    p.add_argument("--ntm-steps", type=_int_list, default=None,
                   help="NTM step counts (default: its trained steps)")
    p.add_argument("--ablation-steps", type=_int_list, default=[4])
    p.add_argument("--seed", type=_seed_list, default=[0], metavar="SEED[,SEED...]",
                   help="noise seed, the same for every sampler; several: each sampler draws "
                   "--n samples per seed, the table gives mean +- standard error")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance weight for every sampler (class-conditional "
                   "runs)")
    p.add_argument("--temperature", type=_temperature_list, default=[1.0],
                   metavar="TAU[,TAU...]",
                   help="the NTMs' sampling temperature (scale of each step's noise); several: "
                   "one row per temperature, named ntm@TAU below 1 (the schedulers always "
                   "start from unscaled noise)")
    p.add_argument("--out", default=None, help="output folder (default: NTM_RUN/compare; with "
                   "--train runs/compare-<dataset>, holding the runs too)")
    p.add_argument("--classifier", default=None, help="cached digits classifier (as ntm eval)")
    p.add_argument("--note", default=None, help="a line for the report's header (e.g. budgets)")
    p.add_argument("--no-ema", action="store_true", help="raw weights instead of EMA")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    t = p.add_argument_group(
        "training the runs (--train)", "train the NTM, the flow-matching run of the same "
        "backbone and the identity-transporter ablation, one after the other with the same "
        "budget and options, into OUT/ntm, OUT/fm, OUT/ablation (existing runs are resumed, "
        "finished ones kept), then compare them")
    t.add_argument("--train", action="store_true", help="train (or resume) the runs")
    t.add_argument("--dataset", default=None, help="training data, as ntm train --dataset "
                   "(digits, colour-patches, a folder of images, ...)")
    t.add_argument("--class-conditional", action="store_true", default=False)
    t.add_argument("--image-size", type=_positive(int), default=None)
    t.add_argument("--channels", type=int, choices=(1, 3), default=None)
    t.add_argument("--iters", type=_role_iters, default=None, metavar="N|ntm=N,fm=N,ablation=N",
                   help="iterations per run, or per role (e.g. the same wall-clock by measured "
                   "per-iteration costs); reproducible on a busy machine")
    t.add_argument("--minutes", type=_positive(float), default=None,
                   help="minutes of training per run (the runs end at whichever of --iters "
                   "and --minutes comes first; neither: ntm train's default for the dataset)")
    t.add_argument("--train-options", default=None, metavar='"OPTIONS"',
                   help="further ntm train options for all three runs, one quoted string "
                   '(e.g. "--width 64 --depth 2 --batch-size 64")')


def check_mode(args, error: Callable[[str], None]) -> None:
    """Exactly one of the two modes: existing runs (``NTM_RUN --fm FM_RUN``) or ``--train
    --dataset D``; ``error(message)`` does not return."""
    if args.train:
        for name, val in (("NTM_RUN", args.ntm), ("--fm", args.fm),
                          ("--ablation", args.ablation)):
            if val is not None:
                error(f"--train trains its own runs into --out; give no {name}, got {val!r}")
        if not args.dataset:
            error("--train needs --dataset (e.g. digits, colour-patches or a folder of images)")
        return
    for dest, option in TRAIN_ONLY.items():
        if getattr(args, dest) not in (None, False):
            error(f"{option} applies with --train only (it trains the runs); got {option} "
                  f"without --train")
    if args.ntm is None or args.fm is None:
        error("give NTM_RUN and --fm FM_RUN (existing runs), or --train --dataset D (train "
              f"them); got NTM_RUN {args.ntm!r}, --fm {args.fm!r}")


def machine() -> Dict[str, Any]:
    """What the timings were measured on."""
    import diffusers   # deferred: heavy, and the `ntm` parser imports this module
    info = {"platform": platform.platform(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "diffusers": diffusers.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def load_runs(runs: Dict[str, Optional[str]], device, *, load_model: Callable, use_ema: bool,
              error: Callable[[str], None]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(models, checkpoints)`` by role of the runs given (``runs``: role -> path or None);
    ``error`` reports a run in the wrong role (an FM run as the NTM, or the reverse)."""
    models, cks = {}, {}
    for role, path in runs.items():
        if path is not None:
            models[role], cks[role] = load_model(path, device, use_ema=use_ema)
    for role, ck in cks.items():
        objective = ck.config.get("objective", "ntm")
        if (objective == "flow_matching") != (role == "fm"):
            error(f"the {role} run {ck.path} must be "
                  f"{'a flow-matching' if role == 'fm' else 'an NTM'} run, got objective "
                  f"{objective!r}")
    return models, cks


def report_meta(args, cks: Dict[str, Any], rating) -> Dict[str, Any]:
    """The report's header: the machine, the weights, the metric and what real data scores
    on it, and each run's folder, iterations, training seconds and budget."""
    meta = {"machine": machine(), "weights": "raw" if args.no_ema else "ema"}
    if args.note:
        meta["note"] = args.note
    meta["metric"] = METRICS[rating.metric]
    if rating.reference is not None:
        meta["reference_frechet_distance"] = rating.reference
        meta["reference"] = rating.reference_note
    for metric, value in rating.other_references.items():
        meta[f"reference_{metric}"] = value
    for role, ck in cks.items():
        meta[f"{role}_run"] = {"path": str(ck.path), "step": ck.step,
                               "train_elapsed_s": ck.state.get("elapsed_s"),
                               "budget": budget_of(ck.config)}
    return meta


def cmd_compare(args, parser, *, load_model: Callable, device_of: Callable,
                log: Callable[[str], None]) -> int:
    """Run ``ntm compare`` (``load_model(path, device, use_ema) -> (model, checkpoint)`` and
    ``device_of(name)`` are the CLI's): with ``--train`` first train or resume the three runs
    (:mod:`ntm_engine.compare.train_runs`), then sample, time and rate every sampler."""
    from ..compare.report import markdown_table
    from ..compare.samplers import compare_samplers   # deferred: imports diffusers (heavy)
    check_mode(args, parser.error)
    if args.n < 1:
        parser.error(f"--n must be a positive integer, got {args.n}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else None
    if args.train:
        out = out or Path("runs") / f"compare-{Path(args.dataset).stem}"
        plans = plan_runs(args, out, parser.error)   # option errors before any work
        device = device_of(args.device)
        status = train_runs(plans, device=device, log=log, progress=not args.no_progress)
        if status is not None:
            return status
        runs: Dict[str, Optional[str]] = {p.role: str(p.out) for p in plans}
    else:
        device = device_of(args.device)
        runs = {"ntm": args.ntm, "fm": args.fm, "ablation": args.ablation}
    models, cks = load_runs(runs, device, load_model=load_model, use_ema=not args.no_ema,
                            error=parser.error)
    try:
        rating = rating_for({r: ck.config for r, ck in cks.items()}, args.n,
                            classifier=args.classifier, log=log)
    except ValueError as e:
        parser.error(str(e))
    if args.guidance != 0 and rating.labels is None:
        parser.error(f"--guidance {args.guidance} needs class-conditional runs")
    diffs = architecture_differences(cks["fm"].config["model"], cks["ntm"].config["model"])
    if diffs:
        log("ntm compare: the backbones differ: " + ", ".join(
            f"{k} fm={a} ntm={b}" for k, a, b in diffs))
    out = out or cks["ntm"].path.parent.parent / "compare"
    rows = compare_samplers(
        ntm=models["ntm"], fm=models["fm"], ntm_ablation=models.get("ablation"),
        quality=rating.quality, labels=rating.labels, n=args.n, steps=args.steps,
        schedulers=args.schedulers, ntm_steps=args.ntm_steps,
        ablation_steps=args.ablation_steps, guidance=args.guidance,
        temperatures=args.temperature, seed=args.seed,
        device=device, out_dir=out,
        title=f"{cks['ntm'].config['dataset']}: quality against steps and time",
        meta=report_meta(args, cks, rating), progress=not args.no_progress)
    print(markdown_table(rows), end="")
    print(f"wrote {out}/quality_vs_steps.{{md,png,json}}")
    return 0


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
SHARED = ("dataset", "image_size", "channels", "minutes")   # and --iters, per role


def train_parser() -> argparse.ArgumentParser:
    """The parser of ``ntm train`` (its options are those of ``--train-options``)."""
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
        ns.iters = args.iters[role] if args.iters else None
        ns.class_conditional = True if args.class_conditional else None
        ns.out, ns.resume = str(out / role), True
        for k, v in overrides.items():
            setattr(ns, k, v)
        try:
            cfg = train.train_config(ns)
        except ConfigError as e:
            raise ConfigError(f"{ROLES[role][0]} ({out / role}): {e}") from e
        plans.append(RunPlan(role, out / role, cfg, plots=not given.no_plots))
    return plans


def add_parser(sub) -> None:
    c = sub.add_parser(
        "compare", help="NTM against diffusers' schedulers on a flow-matching run",
        description="Sample --n images from each sampler (diffusers' flow-matching schedulers "
        "on the --fm run at each --steps; the NTM at its trained steps; the --ablation run), "
        "time them and rate them like `ntm eval`; write quality_vs_steps.{md,png,json}. "
        "With --train --dataset D: first train (or resume) the three runs with one budget "
        "into --out.",
        formatter_class=HelpFormatter)
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
