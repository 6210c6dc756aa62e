"""``ntm train``: train an NTM, pretrain a flow-matching model, or start an NTM from one;
checkpoints survive kills and ``--resume`` continues a run."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Union

import torch
import torch.distributed as dist

from .. import checkpoint as ckpt
from ..models.transporter import TRANSPORTER_KINDS
from ..training import (DATASETS, IMAGE_NAMES, MODEL_OPTIONS, PRECISIONS, TRAIN_DEFAULTS,
                        ConfigError, TrainConfig, Trainer, config_differences, make_config,
                        run_command)
from ..training.config import TRAJECTORY_LOSSES
from ..training.decoder import decoder_spec
from ..training.distributed import PARALLEL
from ..training.sections import REVERSIBLE_GUARDS
from ..training.tensorboard import TensorBoardSink
from ..models import NTM, schedule
from ..models.ntm import TRANSPORTER_BACKWARDS
from .common import (HelpFormatter, add_device_options, int_list, log, nonneg_float, nonneg_int,
                     note_busy_cores, positive_float, positive_int, setup_device)

# Budget when neither --iters nor --minutes is given: the iterations, capped by a time budget
# (the cosine schedule follows whichever ends first, so a slow or busy machine still finishes
# in about that time; on an idle one the iteration count ends the run, reproducibly).
DEFAULT_ITERS = {"digits": 1500, "checkerboard": 2000, "eight_gaussians": 2000,
                 "two_moons": 2000, "images": 2000}
DEFAULT_MINUTES = {"digits": 10.0, "checkerboard": 5.0, "eight_gaussians": 5.0,
                   "two_moons": 5.0, "images": 10.0}
# AdamW weight decay when --weight-decay is not given: the digits' 1438 training images are
# overfit within the main job's budget, and 0.3 measured best there (0.1 / 0.3 / 1.0,
# bench/results/2026-12-06-digits-regularisation.md); other data the optimiser's default
DEFAULT_WEIGHT_DECAY = {"digits": 0.3}
DATA_OPTIONS = ("image_size", "channels", "data_workers")


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model (checkpoints survive kills; --resume)",
                       formatter_class=HelpFormatter,
                       description="Train an NTM. Model options default to "
                       "NTM.digits_config()/NTM.toy_config(); on --resume every option not "
                       "given is taken from the checkpoint.")
    _add_data_options(t.add_argument_group("data"))
    t.add_argument("--out", default=None, help="run folder (default: runs/<dataset>)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint in --out (start fresh if "
                   "--out holds none; an error if all of them are corrupt)")
    t.add_argument("--restart", action="store_true",
                   help="begin the run in --out again from step 0 (its checkpoints and "
                   "metrics are moved aside, not deleted)")
    add_device_options(t)
    t.add_argument("--parallel", choices=PARALLEL, default="ddp",
                   help="under torchrun: ddp (every process holds the whole model, gradients "
                   "all-reduced) or fsdp (FSDP2: model, gradients, optimiser state and EMA "
                   "sharded over the processes; needs torchrun, also for one process). Not "
                   "stored: a run resumes with either")
    t.add_argument("--grad-accum", type=positive_int, default=1, metavar="N",
                   help="run each process's batch in N passes and sum their gradients (the "
                   "memory of B/N samples; the same update for the NTM objectives). Not stored")
    t.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                   help="also write the logged numbers as TensorBoard scalars, to DIR "
                   "(default: RUN/tensorboard); needs the tensorboard package")
    t.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    t.add_argument("--no-plots", action="store_true", help="no sample grids / curves")
    _add_model_options(t.add_argument_group("model (default: the dataset's NTM config)"))
    _add_objective_options(t.add_argument_group("flow-matching pretraining and initialisation"))
    _add_optim_options(t.add_argument_group("optimisation"))
    _add_cadence_options(t.add_argument_group("logging, evaluation and checkpoints"))
    # testing hooks (hidden)
    t.add_argument("--fault-nonfinite-at", type=int_list, default=None, help=argparse.SUPPRESS)
    t.add_argument("--throttle", type=float, default=0.0, help=argparse.SUPPRESS)
    t.add_argument("--fault-raise-at", type=int_list, default=None, help=argparse.SUPPRESS)
    t.set_defaults(handler=run)


MODEL_DEFAULTS = NTM.defaults()


def step_counts_arg(s: str) -> Union[int, List[int]]:
    """``--steps 4`` -> 4; ``--steps 4,8,16`` -> [4, 8, 16] (T drawn per example)."""
    try:
        counts = schedule.step_counts(int_list(s))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected distinct step counts >= 1 separated by "
                                         f"commas (e.g. 4 or 4,8,16), got {s!r}: {e}")
    return counts[0] if len(counts) == 1 else list(counts)


def step_shares_arg(s: str) -> List[float]:
    """``--step-shares 2,1,1`` -> [2.0, 1.0, 1.0] (positive numbers; checked against --steps
    when the config is made)."""
    try:
        vals = [positive_float(v) for v in s.split(",")]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, one "
                                         f"per step count (e.g. 2,1,1), got {s!r}")
    return vals


def shift_arg(s: str) -> Union[str, float]:
    """``--shift auto`` (the paper's rule from the token count) or a number > 0."""
    return "auto" if s == "auto" else positive_float(s)


def _add_data_options(d) -> None:
    d.add_argument("--dataset", default=None,
                   help=f"training data: {', '.join(dict.fromkeys(DATASETS + IMAGE_NAMES))}, a folder of "
                   "images (subfolders = classes), a CIFAR-10 python folder or a .npy/.npz "
                   "file (default: digits)")
    d.add_argument("--class-conditional", action="store_true", default=None,
                   help="condition on the class label (labelled images; enables guidance)")
    d.add_argument("--cond", nargs="?", const=True, default=None, metavar="FILE",
                   help="condition on tokens [L, C] per image (e.g. text-encoder outputs; "
                   "enables guidance): alone, the .npz --dataset's own 'cond' key; with FILE, "
                   "an .npz of 'cond' (one sequence per training item) and 'test_cond' (per "
                   "test item) for any --dataset; 'cond_mask'/'test_cond_mask' mark padding")
    d.add_argument("--image-size", type=positive_int, default=None,
                   help="resize the shorter side and centre-crop to this (images; default: "
                   "as stored, colour-patches 16)")
    d.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="1 (greyscale) or 3 (RGB) (images; default: as stored)")
    d.add_argument("--data-workers", type=nonneg_int, default=None,
                   help="DataLoader worker processes for lazily read data (0)")
    d.add_argument("--decoder", default=None, metavar="MODULE:FUNCTION",
                   help="latents (an .npz with a 'latents' array): the function that turns a "
                   "batch of latents [B, C, H, W] into images [B, 1 or 3, h, w] in [0, 1], "
                   "for the sample grids; MODULE is imported with the current folder first "
                   "on sys.path, or is a .py file. Stored in the run (ntm sample/eval reuse "
                   "it); a resumed run may change it")


def _add_model_options(m) -> None:
    m.add_argument("--steps", "--steps-T", dest="steps", type=step_counts_arg, default=None,
                   metavar="T[,T...]", help="trajectory steps T, or several (4,8,16: T drawn "
                   f"per example, the model samples at each); default {MODEL_DEFAULTS['steps']}")
    m.add_argument("--step-shares", type=step_shares_arg, default=None, metavar="S[,S...]",
                   help="how often training draws each step count, one positive number per "
                   "count in increasing T (2,1,1: half the examples at the smallest); default "
                   "equal, or the dataset's config")
    m.add_argument("--transporter", choices=TRANSPORTER_KINDS, default=None,
                   help="autoregressive (causal Transformer blocks over the patch tokens; "
                   "default sizes 2 blocks of width 64), coupling (MLP couplings) or none "
                   f"(identity: the heteroscedastic-Gaussian ablation); default "
                   f"{MODEL_DEFAULTS['transporter']}")
    for name, what in (("width", "predictor width"), ("depth", "predictor blocks"),
                       ("heads", "attention heads"),
                       ("patch_size", "pixels per side of a predictor token")):
        m.add_argument(MODEL_OPTIONS[name], type=positive_int, default=None,
                       help=f"{what} (default: the dataset's config)")
    m.add_argument("--transporter-layers", type=nonneg_int, default=None,
                   help="couplings, or autoregressive blocks (0: identity)")
    m.add_argument("--transporter-hidden", type=positive_int, default=None,
                   help="coupling MLP units, or the autoregressive blocks' width")
    m.add_argument("--transporter-backward", choices=TRANSPORTER_BACKWARDS, default=None,
                   help="how the transporter's backward gets its layers' inputs: inverse "
                   "(rebuilt from the outputs, no stored activations), recompute (kept, each "
                   "layer's forward re-run in parallel) or auto (recompute for autoregressive, "
                   f"inverse for coupling); default {MODEL_DEFAULTS['transporter_backward']}")
    m.add_argument("--shift", type=shift_arg, default=None, metavar="auto|NUMBER",
                   help="time shift of the grid: auto (from the token count) or a number > 0")
    m.add_argument("--t-min-max", type=nonneg_float, default=None,
                   help="training draws t_0 ~ U[0, this] per example (default "
                   f"{MODEL_DEFAULTS['t_min_max']:g})")
    m.add_argument("--label-dropout", type=nonneg_float, default=None,
                   help="probability of the null class in training, for guidance (default "
                   f"{MODEL_DEFAULTS['label_dropout']:g})")
    m.add_argument("--clamp", type=positive_float, default=None,
                   help="soft clamp of the transporter's log-scales (default "
                   f"{MODEL_DEFAULTS['clamp']:g})")
    m.add_argument("--dropout", type=nonneg_float, default=None,
                   help="dropout of the predictor blocks' residual branches in training "
                   "(default: the dataset's config)")
    m.add_argument("--parameterization", choices=("gaussian", "flow_matching"), default=None,
                   help="predictor output: gaussian (default) or flow_matching (a velocity "
                   "head; the default with --objective flow_matching and --init-from)")


def _add_objective_options(f) -> None:
    f.add_argument("--objective", choices=("ntm", "flow_matching"), default=None,
                   help="ntm: trajectory likelihood (default); flow_matching: pretrain the "
                   "predictor as a velocity model")
    f.add_argument("--trajectory-loss", choices=TRAJECTORY_LOSSES, default=None,
                   help="end_to_end (every level, default) or pairwise (one random level per "
                   "example, scaled to the same expectation)")
    f.add_argument("--init-from", default=None, metavar="FM_RUN",
                   help="start the NTM from this flow-matching run or checkpoint (EMA weights)")
    f.add_argument("--fm-reg", type=nonneg_float, default=None, metavar="LAMBDA",
                   help="with --init-from: weight of |mu - mu_FM|^2, cosine-decayed to 0 "
                   f"({TRAIN_DEFAULTS['fm_reg']:g})")


def _add_optim_options(o) -> None:
    o.add_argument("--batch-size", type=positive_int, default=None, help=f"examples per iteration, over all processes ({TRAIN_DEFAULTS['batch_size']})")
    o.add_argument("--lr", type=float, default=None, help=f"peak AdamW learning rate ({TRAIN_DEFAULTS['lr']:g})")
    o.add_argument("--min-lr-ratio", type=float, default=None,
                   help=f"cosine decay ends at this fraction of --lr ({TRAIN_DEFAULTS['min_lr_ratio']:g})")
    o.add_argument("--warmup", type=int, default=None, help=f"linear warm-up iterations ({TRAIN_DEFAULTS['warmup']})")
    o.add_argument("--weight-decay", type=float, default=None,
                   help="AdamW weight decay (" + ", ".join(
                       f"{k} {v:g}" for k, v in DEFAULT_WEIGHT_DECAY.items())
                   + f", otherwise {TRAIN_DEFAULTS['weight_decay']:g})")
    o.add_argument("--ema-decay", type=float, default=None, help=f"EMA decay of weights ({TRAIN_DEFAULTS['ema_decay']:g}), reached after "
                   "the ramp of --ema-warmup (with its default, at step 4490)")
    o.add_argument("--ema-warmup", type=float, default=None, metavar="W",
                   help=f"EMA ramp (1+n)/(W+n) of the first updates, W > 1: a shorter run "
                   f"averages over about its last n/(W-1) steps ({TRAIN_DEFAULTS['ema_warmup']:g})")
    o.add_argument("--grad-clip", type=float, default=None, help=f"gradient-norm clip ({TRAIN_DEFAULTS['grad_clip']:g})")
    o.add_argument("--seed", type=int, default=None, help=f"seed of everything ({TRAIN_DEFAULTS['seed']})")
    o.add_argument("--iters", type=int, default=None,
                   help="iterations; without --iters and --minutes: %s" %
                   ", ".join(f"{k} {v} capped at {DEFAULT_MINUTES[k]:g} min"
                             for k, v in DEFAULT_ITERS.items()))
    o.add_argument("--minutes", type=float, default=None,
                   help="time budget in minutes of training (across resumes); the cosine "
                   "schedule follows whichever of --iters/--minutes ends first (a run ended by "
                   "time is not bitwise reproducible)")
    o.add_argument("--max-nonfinite", type=int, default=None,
                   help="stop after this many consecutive non-finite losses "
                   f"({TRAIN_DEFAULTS['max_nonfinite']})")
    o.add_argument("--checkpoint-predictor", action="store_true", default=None,
                   help="recompute the predictor's blocks in the backward pass instead of "
                   "keeping their activations (less memory, ~1/3 more predictor time)")
    o.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="training forward: fp32, or bf16 autocast with float32 master "
                   f"weights, losses and log-dets ({TRAIN_DEFAULTS['precision']})")
    # the drift guard of the reversible backward (ntm_engine.training.drift)
    o.add_argument("--reversible", dest="reversible_guard", choices=REVERSIBLE_GUARDS,
                   default=None, help="when the reversible backward's rebuilt inputs drift "
                   "beyond --reversible-tolerance: fallback (keep activations, plain autograd, "
                   "for the rest of the run) or strict (checkpoint and stop) "
                   f"({TRAIN_DEFAULTS['reversible_guard']})")
    o.add_argument("--reversible-check-every", type=nonneg_int, default=None, metavar="N",
                   help="measure that drift every N iterations, on a slice of the batch "
                   f"(0: never) ({TRAIN_DEFAULTS['reversible_check_every']})")
    o.add_argument("--reversible-tolerance", type=positive_float, default=None,
                   help="largest drift allowed, relative to the inputs' scale (1e-3 with fp32, "
                   "0.1 with bf16)")


def _add_cadence_options(c) -> None:
    c.add_argument("--log-every", type=int, default=None,
                   help=f"iterations per log record ({TRAIN_DEFAULTS['log_every']})")
    c.add_argument("--eval-every", type=int, default=None,
                   help="iterations per test bits/dim + sample grid "
                   f"({TRAIN_DEFAULTS['eval_every']})")
    c.add_argument("--eval-samples", type=int, default=None,
                   help=f"samples in each grid ({TRAIN_DEFAULTS['eval_samples']}; toys draw at "
                   "least 1000)")
    c.add_argument("--ckpt-every", type=int, default=None, help=f"iterations per checkpoint ({TRAIN_DEFAULTS['ckpt_every']})")
    c.add_argument("--keep", type=int, default=None, help=f"checkpoints kept ({TRAIN_DEFAULTS['keep']})")


def _resumed_config(base: Dict[str, Any], args, model_over, train_over) -> TrainConfig:
    """The stored config with the options given; options that define the run must agree."""
    stored = TrainConfig.from_dict(base)
    requested = stored.to_dict()
    if args.dataset is not None:
        requested["dataset"] = args.dataset
    if args.class_conditional is not None:
        requested["class_conditional"] = True
    if args.cond is not None:
        requested["cond"] = cond_source(args.cond, requested["dataset"])
    requested.update({k: getattr(args, k) for k in DATA_OPTIONS
                      if getattr(args, k) is not None})
    requested["model"].update(model_over)
    requested.update({k: train_over[k] for k in ("batch_size", "seed", "trajectory_loss")
                      if k in train_over})
    diffs = config_differences(stored, requested)
    if diffs:
        raise ConfigError(f"--resume: the checkpoint in {args.out} was made with another "
                          "configuration:\n  " + "\n  ".join(diffs))
    if args.decoder is not None:   # (not part of the run's identity)
        train_over = {**train_over, "decoder": decoder_spec(args.decoder)}
    return stored.replace(**train_over)


def train_config(args) -> TrainConfig:
    """The run configuration from the arguments (and, on --resume, the checkpoint)."""
    model_over = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k) is not None}
    train_over = {k: getattr(args, k) for k in TRAIN_DEFAULTS
                  if getattr(args, k, None) is not None}
    latest = ckpt.load_latest(args.out, log=lambda m: None) if args.resume else None
    if latest is not None:
        return _resumed_config(latest.config, args, model_over, train_over)
    dataset = args.dataset or "digits"
    if train_over.get("iters") is None and train_over.get("minutes") is None:
        train_over.update(iters=DEFAULT_ITERS.get(dataset, DEFAULT_ITERS["images"]),
                          minutes=DEFAULT_MINUTES.get(dataset, DEFAULT_MINUTES["images"]))
    train_over.setdefault("weight_decay",
                          DEFAULT_WEIGHT_DECAY.get(dataset, TRAIN_DEFAULTS["weight_decay"]))
    data_over = {k: getattr(args, k) for k in DATA_OPTIONS if getattr(args, k) is not None}
    if args.cond is not None:
        data_over["cond"] = cond_source(args.cond, dataset)
    return make_config(dataset, bool(args.class_conditional), model=model_over, **data_over,
                       decoder=args.decoder, **train_over)


def cond_source(cond: Union[bool, str], dataset: str) -> str:
    """The ``cond`` entry of ``--cond [FILE]``: FILE, or (``--cond`` alone) the dataset itself,
    which must then be an ``.npz`` file (ConfigError otherwise)."""
    if cond is not True:
        return cond
    if not dataset.lower().endswith(".npz"):
        raise ConfigError(f"--cond without a FILE takes the tokens from the .npz --dataset's "
                          f"'cond' key; --dataset {dataset} is not an .npz file: give the token "
                          f"file as --cond FILE")
    return dataset


def run(args, parser) -> int:
    if args.out is None:
        args.out = str(Path("runs") / Path(args.dataset or "digits").stem)
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.resume and args.restart:
        parser.error("--resume continues the run in --out, --restart begins it again: give one")
    device = setup_device(args)
    cfg = train_config(args)
    sinks = []
    if args.tensorboard is not None:
        sinks.append(TensorBoardSink(args.tensorboard or Path(args.out) / "tensorboard"))
    trainer = Trainer(cfg, args.out, resume=args.resume, device=device,
                      progress=not args.no_progress, log=log, plots=not args.no_plots,
                      fault_nonfinite_steps=args.fault_nonfinite_at or (),
                      throttle_s=args.throttle, parallel=args.parallel, restart=args.restart,
                      fault_raise_at=args.fault_raise_at, grad_accum=args.grad_accum,
                      metrics_sinks=sinks)
    nparams = sum(p.numel() for p in trainer.model.parameters())
    procs = f", {trainer.world.size} processes" if trainer.world.enabled else ""
    if trainer.sharded:
        procs += f" ({trainer.world.size} FSDP shard{'s' * (trainer.world.size > 1)})"
    if trainer.world.is_main:
        log(f"ntm train: {cfg.dataset}{' (class-conditional)' if cfg.conditional else ''}"
            f"{'' if cfg.data.cond is None else ' (condition tokens of ' + cfg.data.cond + ')'}, "
            f"T={cfg.model['steps']}, transporter {cfg.model['transporter']}, {nparams / 1e6:.2f}M parameters, device "
            f"{trainer.device}, {torch.get_num_threads()} threads, budget iters="
            f"{cfg.optim.iters} minutes={cfg.optim.minutes}{procs}, out {args.out}")
        note_busy_cores(trainer.device)
    try:
        return run_command(trainer.run, "ntm train")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
