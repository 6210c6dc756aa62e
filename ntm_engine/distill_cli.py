"""``ntm distill`` and the ``--denoiser`` option of ``ntm sample`` / ``ntm eval``
(registered by :mod:`ntm_engine.cli`; the loop is :mod:`ntm_engine.distill`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Tuple

# budget when neither --iters nor --minutes is given (the cosine schedule follows whichever
# ends first); sized for the digits teacher on one thread (about 0.4 s per iteration)
DEFAULT_ITERS = 1000
DEFAULT_MINUTES = 5.0


def add_distill_parser(sub, positive_int, positive_float, nonneg_float) -> None:
    """Register ``ntm distill`` on the sub-parsers ``sub`` of the ``ntm`` parser."""
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
    d.add_argument("--device", default="auto")
    d.add_argument("--threads", type=positive_int, default=None)
    d.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def cmd_distill(args, parser, *, load_model: Callable, device_of: Callable,
                log: Callable[[str], None]) -> int:
    import torch

    from . import checkpoint as ckpt
    from .distill import (DISTILL_DEFAULTS, IDENTITY_KEYS, Distiller, make_distill_config)
    from .run_loop import run_command
    from .train import ConfigError, config_differences

    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_of(args.device)
    out = Path(args.out) if args.out else Path(args.run) / "denoiser"
    if not Path(args.run).exists():
        raise ConfigError(f"teacher RUN {args.run}: no such run folder or checkpoint")
    teacher, teacher_ck = load_model(args.run, device)
    train = {k: getattr(args, k) for k in ("iters", "minutes", "batch_size", "updates_per_batch",
                                           "lr", "seed") if getattr(args, k) is not None}
    latest = ckpt.load_latest(out, log=lambda m: None) if args.resume else None
    if latest is not None and latest.config.get("kind") == "ntm-denoiser":
        base = latest.config   # options not given come from the checkpoint
        t_min = args.t_min if args.t_min is not None else base["t_min"]
        train = {**{k: base[k] for k in DISTILL_DEFAULTS if k in base}, **train}
        cfg = make_distill_config(teacher_ck, t_min=t_min, denoiser={
            k: v for k, v in base["denoiser"].items() if k not in ("data_shape", "num_classes")},
            label_dropout=base["label_dropout"], **train)
        diffs = config_differences(base, cfg, IDENTITY_KEYS)
        if diffs:
            raise ConfigError(f"--resume: the checkpoint in {out} was made with another "
                              "configuration:\n  " + "\n  ".join(diffs))
    else:
        if train.get("iters") is None and train.get("minutes") is None:
            train.update(iters=DEFAULT_ITERS, minutes=DEFAULT_MINUTES)
        cfg = make_distill_config(teacher_ck, t_min=args.t_min, **train)
    distiller = Distiller(cfg, out, teacher, resume=args.resume, device=device,
                          progress=not args.no_progress, log=log)
    n_den = sum(p.numel() for p in distiller.model.parameters())
    n_teacher = sum(p.numel() for p in teacher.parameters())
    log(f"ntm distill: teacher {teacher_ck.path} (step {teacher_ck.step}, {n_teacher / 1e6:.2f}M "
        f"parameters) -> denoiser {cfg['denoiser']['arch']} ({n_den / 1e3:.0f}k parameters), "
        f"t_d = {cfg['t_min']}, device {device}, {torch.get_num_threads()} threads, budget "
        f"iters={cfg['iters']} minutes={cfg['minutes']}, out {out}")
    return run_command(distiller, "ntm distill")


def load_denoiser_for(path: Optional[str], model, model_ck, device, log: Callable[[str], None]
                      ) -> Tuple[Optional[object], float, Optional[object]]:
    """``(denoiser, t_d, checkpoint)`` for ``--denoiser path`` used with ``model`` loaded from
    ``model_ck`` (``(None, 0.0, None)`` without ``--denoiser``); refuses a model that is not an
    NTM and a denoiser made for another kind of model."""
    if path is None:
        return None, 0.0, None
    from .distill import check_denoiser_fits, load_denoiser
    from .models import NTM
    from .train import ConfigError

    if not isinstance(model, NTM):
        raise ConfigError(f"--denoiser needs an NTM run; {model_ck.path} holds a "
                          f"{type(model).__name__}")

    den, ck = load_denoiser(path, device, log=log)
    check_denoiser_fits(model_ck, ck, log)
    return den, float(ck.config["t_min"]), ck
