"""The ``ntm`` command line (also ``python -m ntm_engine``).

    ntm train  [--dataset digits|checkerboard|eight_gaussians|two_moons] [--class-conditional]
               [model options] [training options] --out RUN [--resume]
               [--objective ntm|flow_matching] [--init-from FM_RUN [--fm-reg LAMBDA]]
    ntm sample RUN_OR_CHECKPOINT [-n N] [--labels 0,1,2|all|none] [--steps S]
               [--temperature TAU] [--guidance W] [--seed S] [--out PNG] [--save-pt] [--save-npy]
               [--denoiser DIR]
    ntm eval   RUN_OR_CHECKPOINT [--n-samples N] [--guidance W] [--classifier PATH] [--out JSON]
               [--denoiser DIR]
    ntm distill RUN [--out DIR] [--t-min T] [--iters N] [--minutes M] [--batch-size B]
               [--lr LR] [--seed S] [--threads K] [--resume] [--no-progress]

Starting from a flow-matching model (DESIGN.md section 1): ``ntm train --objective
flow_matching --out FM_RUN`` pretrains the predictor backbone as a velocity model (its own
Euler sampler: ``ntm sample/eval FM_RUN [--steps N]``, 32 steps by default; ``eval`` reports
its test loss instead of bits/dim); ``ntm train --init-from FM_RUN --out RUN`` then trains an
NTM from it (flow_matching parameterization, identity transporter) with ``--fm-reg`` lambda
(2.5) times ``|mu - mu_FM|^2``, cosine-decayed to 0.  The architecture options must equal the
FM run's (an error names the key that differs).

Self-distillation (DESIGN.md section 1, "Trajectory denoising"): ``ntm distill RUN`` trains a
light denoiser ``g(u_{t_0}, t_0, y)`` on the run's Tweedie posterior means at ``t_0 = t_d``
(``--t-min``, default the run's ``t_min_max``) into ``--out`` (default ``RUN/denoiser``;
:mod:`ntm_engine.distill_cli`); ``ntm sample/eval RUN --denoiser DIR`` then samples on the grid
with ``t_0 = t_d`` and replaces the transporter inverse by the denoiser (``eval`` reports the
plain sampler, the ``t_0 = t_d`` sampler without and with the denoiser, each with ms/sample).

Errors in the configuration are reported before any work starts (exit status 2 for argument
errors, 1 for everything else, with a message that says what to change).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

# Budget when neither --iters nor --minutes is given: the iterations, capped by a time budget
# (the cosine schedule follows whichever ends first, so a slow or busy machine still finishes
# in about that time; on an idle one the iteration count ends the run, reproducibly).
DEFAULT_ITERS = {"digits": 1500, "checkerboard": 2000, "eight_gaussians": 2000,
                 "two_moons": 2000}
DEFAULT_MINUTES = {"digits": 10.0, "checkerboard": 5.0, "eight_gaussians": 5.0,
                   "two_moons": 5.0}


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
    return v


def _nonneg_float(s: str) -> float:
    v = float(s)
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {s}")
    return v


def _int_list(s: str) -> List[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")


def build_parser() -> argparse.ArgumentParser:
    from .train import DATASETS

    p = argparse.ArgumentParser(
        prog="ntm", description="Train, sample and evaluate Normalizing Trajectory Models.")
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{train,sample,eval,distill}")

    # ------------------------------------------------------------------ train
    t = sub.add_parser("train", help="train a model (checkpoints survive kills; --resume)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train an NTM. Model options default to "
                       "NTM.digits_config()/NTM.toy_config(); on --resume every option not "
                       "given is taken from the checkpoint.")
    t.add_argument("--dataset", choices=DATASETS, default=None,
                   help="training data (default: digits)")
    t.add_argument("--class-conditional", action="store_true", default=None,
                   help="condition on the digit label (digits only; enables guidance)")
    t.add_argument("--out", default=None, help="run folder (default: runs/<dataset>)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint in --out (start fresh if none)")
    t.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    t.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    t.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    t.add_argument("--no-plots", action="store_true", help="no sample grids / curves")
    m = t.add_argument_group("model (default: the dataset's NTM config)")
    m.add_argument("--steps-T", dest="steps", type=int, default=None,
                   help="number of trajectory steps T (>= 1; default 4)")
    m.add_argument("--width", type=_positive_int, default=None)
    m.add_argument("--depth", type=_positive_int, default=None)
    m.add_argument("--heads", type=_positive_int, default=None)
    m.add_argument("--patch-size", type=_positive_int, default=None)
    m.add_argument("--transporter-layers", type=_nonneg_int, default=None)
    m.add_argument("--transporter-hidden", type=_positive_int, default=None)
    m.add_argument("--shift", type=_positive_float, default=None)
    m.add_argument("--t-min-max", type=_nonneg_float, default=None)
    m.add_argument("--label-dropout", type=_nonneg_float, default=None)
    m.add_argument("--clamp", type=_positive_float, default=None)
    m.add_argument("--parameterization", choices=("gaussian", "flow_matching"), default=None,
                   help="predictor output: gaussian (default) or flow_matching (a velocity "
                   "head; the default with --objective flow_matching and --init-from)")
    f = t.add_argument_group("flow-matching pretraining and initialisation")
    f.add_argument("--objective", choices=("ntm", "flow_matching"), default=None,
                   help="ntm: trajectory likelihood (default); flow_matching: pretrain the "
                   "predictor as a velocity model")
    f.add_argument("--init-from", default=None, metavar="FM_RUN",
                   help="start the NTM from this flow-matching run or checkpoint (EMA weights)")
    f.add_argument("--fm-reg", type=_nonneg_float, default=None, metavar="LAMBDA",
                   help="with --init-from: weight of |mu - mu_FM|^2, cosine-decayed to 0 (2.5)")
    o = t.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=_positive_int, default=None, help="default 128")
    o.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (3e-3)")
    o.add_argument("--min-lr-ratio", type=float, default=None,
                   help="cosine decay ends at this fraction of --lr (0.05)")
    o.add_argument("--warmup", type=int, default=None, help="linear warm-up iterations (100)")
    o.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (0.01)")
    o.add_argument("--ema-decay", type=float, default=None, help="EMA decay of weights (0.998)")
    o.add_argument("--grad-clip", type=float, default=None, help="gradient-norm clip (1.0)")
    o.add_argument("--seed", type=int, default=None, help="seed of everything (0)")
    o.add_argument("--iters", type=int, default=None,
                   help="iterations; without --iters and --minutes: %s" %
                   ", ".join(f"{k} {v} capped at {DEFAULT_MINUTES[k]:g} min"
                             for k, v in DEFAULT_ITERS.items()))
    o.add_argument("--minutes", type=float, default=None,
                   help="time budget in minutes of training (across resumes); the cosine "
                   "schedule follows whichever of --iters/--minutes ends first (a run ended by "
                   "time is not bitwise reproducible)")
    o.add_argument("--max-nonfinite", type=int, default=None,
                   help="stop after this many consecutive non-finite losses (20)")
    c = t.add_argument_group("logging, evaluation and checkpoints")
    c.add_argument("--log-every", type=int, default=None, help="iterations per log record (25)")
    c.add_argument("--eval-every", type=int, default=None,
                   help="iterations per test bits/dim + sample grid (250)")
    c.add_argument("--eval-samples", type=int, default=None,
                   help="samples in each grid (100; toys draw at least 1000)")
    c.add_argument("--ckpt-every", type=int, default=None, help="iterations per checkpoint (250)")
    c.add_argument("--keep", type=int, default=None, help="checkpoints kept (2)")
    # testing hooks (hidden)
    t.add_argument("--fault-nonfinite-at", type=_int_list, default=None, help=argparse.SUPPRESS)
    t.add_argument("--throttle", type=float, default=0.0, help=argparse.SUPPRESS)

    # ------------------------------------------------------------------ sample
    s = sub.add_parser("sample", help="draw samples from a checkpoint into a PNG grid",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("checkpoint", help="run folder, its checkpoints/ folder, or a checkpoint folder")
    s.add_argument("-n", type=_positive_int, default=100, help="number of samples")
    s.add_argument("--labels", default=None,
                   help="class-conditional models: comma-separated labels cycled over the "
                   "samples, 'all' (0..9 cycled; the default) or 'none' (unconditional)")
    s.add_argument("--steps", type=_positive_int, default=None,
                   help="sampling steps (default: the trained T)")
    s.add_argument("--temperature", type=_nonneg_float, default=1.0)
    s.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="PNG path (default: <run>/sample.png)")
    s.add_argument("--nrow", type=_positive_int, default=10, help="digits per grid row")
    s.add_argument("--save-pt", action="store_true", help="also write the samples as .pt")
    s.add_argument("--save-npy", action="store_true", help="also write the samples as .npy")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    s.add_argument("--denoiser", default=None, metavar="DIR",
                   help="a denoiser made by `ntm distill`: sample with t_0 = its t_d and let it "
                   "replace the transporter inverse")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=_positive_int, default=None)

    # ------------------------------------------------------------------ eval
    e = sub.add_parser("eval", help="test bits/dim and sample quality of a checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("checkpoint", help="run folder, its checkpoints/ folder, or a checkpoint folder")
    e.add_argument("--n-samples", type=_nonneg_int, default=1000,
                   help="samples for the classifier accuracy and Frechet distance")
    e.add_argument("--steps", type=_positive_int, default=None)
    e.add_argument("--temperature", type=_nonneg_float, default=1.0)
    e.add_argument("--guidance", type=float, default=0.0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--bpd-repeats", type=_positive_int, default=1,
                   help="passes over the test split with fresh noise for bits/dim")
    e.add_argument("--classifier", default=None,
                   help="cached digits classifier (default: $NTM_CACHE_DIR or "
                   "~/.cache/ntm_engine/digits_classifier_<version>.safetensors; trained once)")
    e.add_argument("--out", default=None, help="JSON path (default: <run>/eval.json)")
    e.add_argument("--no-ema", action="store_true")
    e.add_argument("--denoiser", default=None, metavar="DIR",
                   help="also evaluate sampling with t_0 = the denoiser's t_d, with the "
                   "transporter inverse and with the denoiser (made by `ntm distill`)")
    e.add_argument("--device", default="auto")
    e.add_argument("--threads", type=_positive_int, default=None)

    # ------------------------------------------------------------------ distill
    from .distill_cli import add_distill_parser
    add_distill_parser(sub, _positive_int, _positive_float, _nonneg_float)
    return p


# ----------------------------------------------------------------------------- helpers

def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise SystemExit(f"ntm: error: bad --device {name!r}: {e}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"ntm: error: --device {name} requested but CUDA is not available")
    return dev


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _train_config(args, parser) -> Dict[str, Any]:
    """The run configuration from the arguments (and, on --resume, the checkpoint)."""
    from . import checkpoint as ckpt
    from .train import (MODEL_OPTIONS, TRAIN_DEFAULTS, ConfigError, config_differences,
                        make_config, validate_config)

    model_over = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k) is not None}
    train_over = {k: getattr(args, k) for k in TRAIN_DEFAULTS
                  if getattr(args, k, None) is not None}
    base = None
    if args.resume:
        latest = ckpt.load_latest(args.out, log=lambda m: None)
        base = latest.config if latest is not None else None
    if base is None:
        dataset = args.dataset or "digits"
        if train_over.get("iters") is None and train_over.get("minutes") is None:
            train_over["iters"] = DEFAULT_ITERS[dataset]
            train_over["minutes"] = DEFAULT_MINUTES[dataset]
        return make_config(dataset, bool(args.class_conditional), model=model_over, **train_over)
    cfg = json.loads(json.dumps(base))
    requested = json.loads(json.dumps(base))
    if args.dataset is not None:
        requested["dataset"] = args.dataset
    if args.class_conditional is not None:
        requested["class_conditional"] = True
    requested["model"].update(model_over)
    for k in ("batch_size", "seed"):
        if k in train_over:
            requested[k] = train_over[k]
    diffs = config_differences(base, requested)
    if diffs:
        raise ConfigError(f"--resume: the checkpoint in {args.out} was made with another "
                          "configuration:\n  " + "\n  ".join(diffs))
    cfg.update(train_over)
    validate_config(cfg)
    return cfg


# ----------------------------------------------------------------------------- commands

def cmd_train(args, parser) -> int:
    import torch

    from .run_loop import run_command
    from .train import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out is None:
        args.out = str(Path("runs") / (args.dataset or "digits"))
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps-T (number of trajectory steps T) must be >= 1, got {args.steps}")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    device = _device(args.device)
    cfg = _train_config(args, parser)
    trainer = Trainer(cfg, args.out, resume=args.resume, device=device,
                      progress=not args.no_progress, log=_log, plots=not args.no_plots,
                      fault_nonfinite_steps=args.fault_nonfinite_at or (),
                      throttle_s=args.throttle)
    nparams = sum(p.numel() for p in trainer.model.parameters())
    _log(f"ntm train: {cfg['dataset']}{' (class-conditional)' if cfg['class_conditional'] else ''}"
         f", T={cfg['model']['steps']}, {nparams / 1e6:.2f}M parameters, device {device}, "
         f"{torch.get_num_threads()} threads, budget iters={cfg['iters']} minutes={cfg['minutes']}"
         f", out {args.out}")
    return run_command(trainer, "ntm train")


def load_model(path, device, use_ema: bool = True):
    """``(model, checkpoint)`` from a run folder / checkpoint, EMA weights by default."""
    from . import checkpoint as ckpt
    from .train import ConfigError, build_model, check_model_code

    ck = ckpt.resolve(path, log=_log)
    if ck.config.get("kind") == "ntm-denoiser":
        raise ConfigError(f"{ck.path} is a denoiser (made by `ntm distill`), not a model run; "
                          "give its teacher run and pass it as --denoiser")
    check_model_code(ck.state, ck.path, _log)
    model = build_model(ck.config)
    weights = ck.ema if (use_ema and ck.ema is not None) else ck.model
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"checkpoint {ck.path} does not fit the model of its config: {e}")
    return model.to(device).eval(), ck


def _run_dir(ck) -> Path:
    # <run>/checkpoints/step_N -> <run>
    return ck.path.parent.parent


def _labels(spec: Optional[str], cfg: Dict[str, Any], n: int):
    import torch

    if not cfg["class_conditional"]:
        if spec not in (None, "none"):
            raise SystemExit("ntm sample: error: --labels given but the model is unconditional")
        return None
    if spec in (None, "all"):
        return torch.arange(n) % 10
    if spec == "none":
        return None
    vals = _int_list(spec)
    if not vals or any(not 0 <= v < 10 for v in vals):
        raise SystemExit(f"ntm sample: error: --labels must be digits 0..9, got {spec!r}")
    return torch.tensor(vals).repeat(math.ceil(n / len(vals)))[:n]


def cmd_sample(args, parser) -> int:
    import torch

    from . import plots
    from .checkpoint import atomic_write_bytes

    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    model, ck = load_model(args.checkpoint, device, use_ema=not args.no_ema)
    cfg = ck.config
    y = _labels(args.labels, cfg, args.n)
    if args.guidance and y is None:
        raise SystemExit("ntm sample: error: --guidance needs a class-conditional model and labels")
    from .distill_cli import load_denoiser_for
    denoiser, t_d, den_ck = load_denoiser_for(args.denoiser, model, ck, device, _log)
    den_kw = {} if denoiser is None else {"t_min": t_d, "denoiser": denoiser}
    # warm-up (first-call allocations), so the timing below is the steady state
    model.sample(min(args.n, 2), y=None if y is None else y[:2].to(device), steps=args.steps,
                 guidance=args.guidance, generator=torch.Generator(device=device).manual_seed(0),
                 **den_kw)
    g = torch.Generator(device=device).manual_seed(args.seed)
    t0 = time.perf_counter()
    x = model.sample(args.n, y=None if y is None else y.to(device), steps=args.steps,
                     temperature=args.temperature, guidance=args.guidance, generator=g, **den_kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    x = x.cpu()
    out = Path(args.out) if args.out else _run_dir(ck) / "sample.png"
    if cfg["dataset"] == "digits":
        plots.save_digit_grid(x, out, nrow=args.nrow)
    else:
        from .train import test_data
        plots.save_toy_scatter(x, out, reference=test_data(cfg)[0][:len(x)])
    written = [str(out)]
    if args.save_pt:
        import io
        buf = io.BytesIO()
        torch.save({"samples": x, "labels": y}, buf)
        atomic_write_bytes(out.with_suffix(".pt"), buf.getvalue())
        written.append(str(out.with_suffix(".pt")))
    if args.save_npy:
        import io
        import numpy as np
        buf = io.BytesIO()
        np.save(buf, x.numpy())
        atomic_write_bytes(out.with_suffix(".npy"), buf.getvalue())
        written.append(str(out.with_suffix(".npy")))
    from .train import default_sample_steps
    steps = args.steps or default_sample_steps(cfg)
    print(f"{args.n} samples from {ck.path} (step {ck.step}, {'raw' if args.no_ema else 'EMA'} "
          f"weights), {steps} steps, temperature {args.temperature}, guidance {args.guidance}"
          + ("" if denoiser is None else f", t_0 = {t_d} with the denoiser {den_ck.path}")
          + f": {dt:.3f} s, {1e3 * dt / args.n:.3f} ms per sample on {device}")
    print("wrote " + ", ".join(written))
    return 0


def _sample_quality(cfg: Dict[str, Any], args, y, res: Dict[str, Any]):
    """The rating of a batch of samples for ``cmd_eval`` (digits: the classifier, loaded once;
    its description goes into ``res``)."""
    import torch

    from . import metrics
    from .train import test_data

    if cfg["dataset"] == "digits":
        from .data import load_digits
        net, meta = metrics.load_or_train_classifier(args.classifier, log=_log)
        xt, _ = load_digits("test")
        xtr, _ = load_digits("train")
        res["classifier"] = {"path": meta.get("path"), "version": meta.get("version"),
                             "test_accuracy": float(meta.get("test_accuracy", "nan"))}
        res["frechet_distance_train_vs_test"] = metrics.frechet_distance_features(
            net.features(xtr), net.features(xt))
        return lambda s: metrics.sample_quality(net, s, y, xt)
    xt, _ = test_data(cfg)

    def toy_quality(s):
        out = {"frechet_distance_raw": metrics.frechet_distance_features(s, xt)}
        if cfg["dataset"] == "eight_gaussians":
            from .data import eight_gaussian_modes
            d = torch.cdist(s, eight_gaussian_modes()).min(1).values
            out["fraction_within_3std_of_a_mode"] = float((d < 0.3).float().mean())
        return out
    return toy_quality


def _eval_sampler(model, n: int, y, device, args, quality, **sample_kw) -> Dict[str, Any]:
    """``n`` samples from noise seeded by ``--seed`` (the same for every sampler), timed after
    a warm-up of 2, and ``quality`` of them."""
    import torch

    y = None if y is None else y.to(device)
    kw = dict(steps=args.steps, temperature=args.temperature, guidance=args.guidance, **sample_kw)
    model.sample(min(n, 2), y=None if y is None else y[:2], **kw,
                 generator=torch.Generator(device=device).manual_seed(0))
    g = torch.Generator(device=device).manual_seed(args.seed)
    t0 = time.perf_counter()
    s = model.sample(n, y=y, generator=g, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    out: Dict[str, Any] = {"sample_ms_per_sample": 1e3 * (time.perf_counter() - t0) / n,
                           "n_samples": n}
    s = s.cpu()
    out["samples_nonfinite"] = int((~torch.isfinite(s)).any(dim=tuple(range(1, s.dim()))).sum())
    out.update(quality(torch.nan_to_num(s, nan=0.0, posinf=1e3, neginf=-1e3)))
    return out


def cmd_eval(args, parser) -> int:
    import torch

    from .checkpoint import atomic_write_text
    from .distill_cli import load_denoiser_for
    from .train import default_sample_steps, evaluate_bpd, evaluate_test, model_code_fingerprint

    if args.denoiser is not None and args.n_samples == 0:
        parser.error("--denoiser evaluates the denoised sampler: it needs --n-samples > 0, "
                     "got --n-samples 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    t_start = time.perf_counter()
    model, ck = load_model(args.checkpoint, device, use_ema=not args.no_ema)
    cfg = ck.config
    res: Dict[str, Any] = {"checkpoint": str(ck.path), "step": ck.step, "dataset": cfg["dataset"],
                           "class_conditional": cfg["class_conditional"],
                           "weights": "raw" if args.no_ema else "ema",
                           "steps": args.steps or default_sample_steps(cfg),
                           "temperature": args.temperature, "guidance": args.guidance,
                           "seed": args.seed, "train_elapsed_s": ck.state.get("elapsed_s"),
                           "model_code_matches": ck.state.get("model_code_sha256") ==
                           model_code_fingerprint()}
    if cfg.get("objective") == "flow_matching":   # no likelihood: its test loss
        res.update({f"test_{k}": v for k, v in
                    evaluate_test(model, cfg, device, seed=args.seed).items()})
    else:
        bpds = [evaluate_bpd(model, cfg, device, seed=args.seed + 1000 * r)
                for r in range(args.bpd_repeats)]
        res["test_bpd"] = sum(b["bpd"] for b in bpds) / len(bpds)
        res["test_bpd_sem"] = bpds[0]["bpd_sem"] / math.sqrt(len(bpds))
        res["test_n"] = bpds[0]["n"]
        res["bpd_note"] = ("upper bound with t_0 = 0, dequantised, 17 levels" if cfg["dataset"]
                           == "digits" else "continuous bits/dim bound (no discretisation term)")
    if args.n_samples > 0:
        n = args.n_samples
        y = torch.arange(n) % 10 if cfg["class_conditional"] else None
        if args.guidance and y is None:
            raise SystemExit("ntm eval: error: --guidance needs a class-conditional model")
        denoiser, t_d, den_ck = load_denoiser_for(args.denoiser, model, ck, device, _log)
        quality = _sample_quality(cfg, args, y, res)
        res.update(_eval_sampler(model, n, y, device, args, quality))
        if denoiser is not None:   # the same noise through the t_0 = t_d grid, both ways
            res["denoiser"] = {"path": str(den_ck.path), "step": den_ck.step, "t_d": t_d,
                               "parameters": sum(p.numel() for p in denoiser.parameters())}
            res["transporter_at_t_d"] = _eval_sampler(model, n, y, device, args, quality,
                                                      t_min=t_d)
            res["denoised"] = _eval_sampler(model, n, y, device, args, quality, t_min=t_d,
                                            denoiser=denoiser)
    res["eval_wall_s"] = time.perf_counter() - t_start
    out = Path(args.out) if args.out else _run_dir(ck) / "eval.json"
    atomic_write_text(out, json.dumps(res, indent=1) + "\n")
    for k, v in res.items():
        if not isinstance(v, dict):
            print(f"{k:32s} {v:.4f}" if isinstance(v, float) else f"{k:32s} {v}")
        elif "sample_ms_per_sample" in v:
            print(f"{k:32s} " + ", ".join(f"{kk} {vv:.4f}" for kk, vv in v.items()
                                          if isinstance(vv, float)))
    print(f"wrote {out}")
    return 0


def cmd_distill(args, parser) -> int:
    from .distill_cli import cmd_distill as run_distill
    return run_distill(args, parser, load_model=load_model, device_of=_device, log=_log)


def main(argv: Optional[List[str]] = None) -> int:
    from .checkpoint import CheckpointError
    from .train import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    cmd = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval,
           "distill": cmd_distill}[args.command]
    try:
        return cmd(args, parser)
    except (ConfigError, CheckpointError) as e:
        raise SystemExit(f"ntm {args.command}: error: {e}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
