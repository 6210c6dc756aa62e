"""``ntm distill``: distil a trained run into a light denoiser (checkpoints; ``--resume``);
use it with ``ntm sample/eval --denoiser DIR``."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..training import (DISTILL_DEFAULTS, KIND, ConfigError, DistillConfig, Distiller,
                        load_run, make_distill_config, run_command)
from ..training.distill_config import distill_differences
from .common import (add_device_options, log, nonneg_float, note_busy_cores, positive_float,
                     positive_int, setup_device)

# budget when neither --iters nor --minutes is given (the cosine schedule follows whichever
# ends first); sized for the digits teacher on one thread (about 0.4 s per iteration)
DEFAULT_ITERS = 1000
DEFAULT_MINUTES = 5.0
TRAIN_OPTIONS = ("iters", "minutes", "batch_size", "updates_per_batch", "lr", "seed")


def add_parser(sub) -> None:
    d = sub.add_parser(
        "distill", help="distil a trained run into a light denoiser (checkpoints; --resume)",
        description="Train a Denoiser g(u_{t_0}, t_0, y) by regression on the frozen teacher's "
        "Tweedie posterior means E[x | X] (EMA weights), on forward trajectories of its "
        "training data with t_0 = --t-min.  Use it with `ntm sample/eval --denoiser DIR`.")
    d.add_argument("run", help="teacher: run folder, its checkpoints/ folder, or a checkpoint")
    d.add_argument("--out", default=None, help="output folder (default: RUN/denoiser)")
    d.add_argument("--t-min", type=nonneg_float, default=None,
                   help="t_d, the t_0 of the distillation (and sampling) grid, in (0, t_1) "
                   "(default: the teacher's t_min_max)")
    d.add_argument("--iters", type=positive_int, default=None,
                   help=f"iterations (teacher batches); without --iters and --minutes: "
                   f"{DEFAULT_ITERS} capped at {DEFAULT_MINUTES:g} min")
    d.add_argument("--minutes", type=positive_float, default=None,
                   help="time budget in minutes (across resumes)")
    d.add_argument("--batch-size", type=positive_int, default=None, help="default 128")
    d.add_argument("--updates-per-batch", type=positive_int, default=None,
                   help="denoiser updates per teacher batch (default 8: the targets cost "
                   "about 20 updates)")
    d.add_argument("--lr", type=positive_float, default=None, help="peak AdamW lr (2e-3)")
    d.add_argument("--seed", type=int, default=None, help="seed of everything (0)")
    d.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint in --out")
    d.add_argument("--restart", action="store_true",
                   help="begin the distillation in --out again from step 0 (its checkpoints "
                   "and metrics are moved aside, not deleted)")
    add_device_options(d)
    d.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    d.set_defaults(handler=run)


def distill_config(args, teacher_ck: ckpt.Checkpoint, out: Path) -> DistillConfig:
    """The config from the arguments; on ``--resume``, options not given come from the
    checkpoint, and those that define the run must agree with it."""
    train = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    latest = ckpt.load_latest(out, log=lambda m: None) if args.resume else None
    if latest is None or latest.config.get("kind") != KIND:
        if train.get("iters") is None and train.get("minutes") is None:
            train.update(iters=DEFAULT_ITERS, minutes=DEFAULT_MINUTES)
        return make_distill_config(teacher_ck, t_min=args.t_min, **train)
    base = DistillConfig.from_dict(latest.config).to_dict()
    t_min = args.t_min if args.t_min is not None else base["t_min"]
    train = {**{k: base[k] for k in DISTILL_DEFAULTS}, **train}
    cfg = make_distill_config(teacher_ck, t_min=t_min, denoiser={
        k: v for k, v in base["denoiser"].items() if k not in ("data_shape", "num_classes")},
        label_dropout=base["label_dropout"], **train)
    diffs = distill_differences(base, cfg)
    if diffs:
        raise ConfigError(f"--resume: the checkpoint in {out} was made with another "
                          "configuration:\n  " + "\n  ".join(diffs))
    return cfg


def run(args, parser) -> int:
    if args.resume and args.restart:
        parser.error("--resume continues the run in --out, --restart begins it again: give one")
    device = setup_device(args)
    out = Path(args.out) if args.out else Path(args.run) / "denoiser"
    if not Path(args.run).exists():
        raise ConfigError(f"teacher RUN {args.run}: no such run folder or checkpoint")
    teacher = load_run(args.run, device, log=log)
    cfg = distill_config(args, teacher.checkpoint, out)
    distiller = Distiller(cfg, out, teacher.model, resume=args.resume, device=device,
                          progress=not args.no_progress, log=log, restart=args.restart)
    n_den = sum(p.numel() for p in distiller.model.parameters())
    n_teacher = sum(p.numel() for p in teacher.model.parameters())
    log(f"ntm distill: teacher {teacher.checkpoint.path} (step {teacher.step}, "
        f"{n_teacher / 1e6:.2f}M parameters) -> denoiser {cfg.denoiser['arch']} "
        f"({n_den / 1e3:.0f}k parameters), t_d = {cfg.t_min}, device {device}, "
        f"{torch.get_num_threads()} threads, budget iters={cfg.optim.iters} "
        f"minutes={cfg.optim.minutes}, out {out}")
    note_busy_cores(device)
    return run_command(distiller.run, "ntm distill")
