"""``ntm eval``: test bits/dim (nats/dim of latents, or the flow-matching test loss) and sample
quality of a run, with ``--denoiser`` also the ``t_0 = t_d`` sampler without and with the
denoiser; writes JSON."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import torch

from .. import metrics
from ..checkpoint import atomic_write_text
from ..data import load_digits
from ..training import (Run, default_sample_steps, denoiser_for, eval_bins, evaluate_bpd,
                        evaluate_test, histogram_bpd, latent_quality, likelihood_key, load_run,
                        model_code_fingerprint, raw_quality, run_decoder, sample_conditions)
from .common import (HelpFormatter, add_device_options, log, nonneg_float, nonneg_int,
                     positive_int, setup_device,
                     timed_samples)


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="test bits/dim and sample quality of a checkpoint",
                       formatter_class=HelpFormatter)
    e.add_argument("checkpoint", help="run folder, its checkpoints/ folder, or a checkpoint folder")
    e.add_argument("--n-samples", type=nonneg_int, default=1000,
                   help="samples for the classifier accuracy and Frechet distance")
    e.add_argument("--steps", type=positive_int, default=None)
    e.add_argument("--temperature", type=nonneg_float, default=1.0)
    e.add_argument("--guidance", type=float, default=0.0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--bpd-repeats", type=positive_int, default=1,
                   help="passes over the test split with fresh noise for bits/dim (nats/dim "
                   "of latents)")
    e.add_argument("--bpd-samples", type=positive_int, default=16, metavar="K",
                   help="trajectories per test image of the importance-weighted bound, each "
                   "with its own dequantisation noise (test_bpd_iw; test_bpd stays the "
                   "single-trajectory bound; latents: "
                   "test_nats_per_dim_iw and test_nats_per_dim)")
    e.add_argument("--t-min", type=nonneg_float, default=None, metavar="T_D",
                   help="t_0 of the trajectory-denoise sampler (default: the --denoiser's t_d, "
                   "else the model's t_min_max)")
    e.add_argument("--classifier", default=None,
                   help="cached digits classifier (default: $NTM_CACHE_DIR or "
                   "~/.cache/ntm_engine/digits_classifier_<version>.safetensors; trained once)")
    e.add_argument("--out", default=None, help="JSON path (default: <run>/eval.json)")
    e.add_argument("--no-ema", action="store_true")
    e.add_argument("--denoiser", default=None, metavar="DIR",
                   help="also evaluate sampling with t_0 = the denoiser's t_d, with the "
                   "transporter inverse and with the denoiser (made by `ntm distill`)")
    e.add_argument("--decoder", default=None, metavar="MODULE:FUNCTION",
                   help="latent runs: the function from latents to images (default: the run's "
                   "own --decoder); with one, samples are also compared as decoded images")
    add_device_options(e)
    e.set_defaults(handler=run)


LATENT_NOTE = ("upper bound on -log p(z) / D, nats per latent dimension, with t_0 = 0: the "
               "continuous density of the latents in their own scale (the per-channel "
               "normalisation's log-Jacobian included); no bins, no dequantisation; no pixel "
               "bits/dim (a decoder is not invertible)")


def likelihood(r: Run, args, device) -> Dict[str, Any]:
    """Test bits/dim (averaged over ``--bpd-repeats``) at the default ``T``, and per trained
    ``T`` the single-trajectory and importance-weighted bounds (and, for a conditional model
    -- labels or condition tokens -- the unconditional ones); the histogram baseline; or the
    FM model's test loss.  Latents: the same as nats/dim, every key named with
    ``nats_per_dim`` instead of ``bpd`` (:func:`~ntm_engine.training.likelihood_key`), no
    histogram baseline."""
    cfg = r.config
    if cfg.objective.objective == "flow_matching":   # no likelihood: its test loss
        return {f"test_{k}": v for k, v in
                evaluate_test(r.model, cfg, device, seed=args.seed).items()}
    m = likelihood_key(cfg)
    bpds = [evaluate_bpd(r.model, cfg, device, seed=args.seed + 1000 * k)
            for k in range(args.bpd_repeats)]
    res = {f"test_{m}": sum(b[m] for b in bpds) / len(bpds),
           f"test_{m}_sem": bpds[0][f"{m}_sem"] / math.sqrt(len(bpds)), "test_n": bpds[0]["n"],
           f"{m}_note": (LATENT_NOTE if cfg.latent else
                         f"upper bound with t_0 = 0, dequantised, {eval_bins(cfg.data)} bins "
                         "(the _iw figures: the noise drawn afresh with each trajectory)"
                         if cfg.data.is_image else
                         "continuous bits/dim bound (no discretisation term)"),
           f"{m}_samples": args.bpd_samples}
    if cfg.data.conditioned:   # the bound is of p(x | y): named so next to p(x)'s
        res[f"test_{m}_cond"] = res[f"test_{m}"]
        res[f"{m}_note"] += (f"; conditional: test_{m} = test_{m}_cond bounds the "
                             f"{'nats' if cfg.latent else 'bits'}/dim of p(x | y) (y: the test "
                             f"items' labels and/or condition tokens), test_{m}_uncond of p(x) "
                             "(the null condition)")
    res[f"{m}_per_steps"] = {str(T): bpd_at(r, args, device, T) for T in trained_steps(r, args)}
    first = res[f"{m}_per_steps"][str(trained_steps(r, args)[0])]
    res.update({f"test_{k}": v for k, v in first.items() if k not in (m, f"{m}_cond")})
    if not cfg.latent:
        res["histogram_baseline_bpd"] = histogram_bpd(cfg)
    return res


def bpd_at(r: Run, args, device, T: int) -> Dict[str, float]:
    """Bits/dim at ``T`` steps: single-trajectory (``bpd``), importance-weighted over
    ``--bpd-samples`` (``bpd_iw``); for a conditional model the same again as ``*_cond`` (of
    ``p(x | y)``) and the unconditional ones (``*_uncond``, of ``p(x)``).  Latents:
    ``nats_per_dim``, ``nats_per_dim_iw``, ..."""
    m = likelihood_key(r.config)
    out = {}
    conditioned = r.config.data.conditioned
    for suffix, uncond in (("", False), ("_uncond", True))[:1 + conditioned]:
        for name, k in ((m, 1), (f"{m}_iw", args.bpd_samples)):
            out[name + suffix] = evaluate_bpd(r.model, r.config, device, seed=args.seed,
                                              samples=k, steps=T, unconditional=uncond)[m]
    if conditioned:
        out.update({f"{m}_cond": out[m], f"{m}_iw_cond": out[f"{m}_iw"]})
    return out


def trained_steps(r: Run, args) -> Tuple[int, ...]:
    """The step counts to report: ``--steps``, or every trained ``T`` of an NTM."""
    if args.steps is not None:
        return (args.steps,)
    return getattr(r.model, "trained_steps", (default_sample_steps(r.config),))


def sample_quality(r: Run, args, y, res: Dict[str, Any]) -> Callable:
    """The rating of a batch of samples (digits: the classifier, loaded once, its accuracy
    against the classes ``y [n]`` the samples should show (None: no accuracy); its description
    goes into ``res``; latents: :func:`~ntm_engine.training.latent_quality`, its note into
    ``res``)."""
    cfg = r.config
    if cfg.latent:
        quality, res["quality_note"] = latent_quality(cfg.data, run_decoder(cfg, args.decoder))
        return quality
    if cfg.dataset == "digits":
        net, meta = metrics.load_or_train_classifier(args.classifier, log=log)
        xt, _ = load_digits("test")
        xtr, _ = load_digits("train")
        res["classifier"] = {"path": meta.get("path"), "version": meta.get("version"),
                             "test_accuracy": float(meta.get("test_accuracy", "nan"))}
        res["frechet_distance_train_vs_test"] = metrics.frechet_distance_features(
            net.features(xtr), net.features(xt))
        return lambda s: metrics.sample_quality(net, s, y, xt)
    return raw_quality(cfg.data)


def eval_sampler(model, n: int, y, device, args, quality, **sample_kw) -> Dict[str, Any]:
    """``n`` samples from noise seeded by ``--seed`` (the same for every sampler), timed after
    a warm-up of 2, and ``quality`` of them (``sample_kw``: ``steps`` and
    :meth:`NTM.sample` options)."""
    s, dt = timed_samples(model, n, y, device, temperature=args.temperature,
                          guidance=args.guidance, seed=args.seed, **sample_kw)
    out: Dict[str, Any] = {"sample_ms_per_sample": 1e3 * dt / n, "n_samples": n}
    out["samples_nonfinite"] = int((~torch.isfinite(s)).any(dim=tuple(range(1, s.dim()))).sum())
    out.update(quality(torch.nan_to_num(s, nan=0.0, posinf=1e3, neginf=-1e3)))
    return out


def samplers(r: Run, args, device, res: Dict[str, Any]) -> None:
    """Sample quality of the plain sampler at each reported ``T`` (the first also at the top
    level) and, for an NTM at the first ``T``, on the ``t_0 = t_d`` grid: the transporter
    inverse, the slow trajectory-denoise sampler and, with ``--denoiser``, the learned
    denoiser (the same noise for all)."""
    n = args.n_samples
    # the condition of each sample and the class it should show: labels 0..K-1 cycled, or the
    # condition tokens of test items of those classes (training.batches.sample_conditions)
    y, classes = sample_conditions(r.config.data, n)
    if args.guidance and y is None:
        raise SystemExit("ntm eval: error: --guidance needs a conditional model (labels or "
                         "condition tokens)")
    denoiser, t_d, den_ck = denoiser_for(args.denoiser, r, device, log)
    quality = sample_quality(r, args, classes, res)
    steps = trained_steps(r, args)
    res["samples_per_steps"] = {str(T): eval_sampler(r.model, n, y, device, args, quality,
                                                     steps=T) for T in steps}
    res.update(res["samples_per_steps"][str(steps[0])])
    if r.config.objective.objective == "flow_matching":
        return
    t_d = t_d if denoiser is not None else t_min_of(r, args)
    at_t_d = dict(steps=steps[0], t_min=t_d)
    res["t_d"] = t_d
    res["transporter_at_t_d"] = eval_sampler(r.model, n, y, device, args, quality, **at_t_d)
    res["trajectory_denoise"] = eval_sampler(r.model, n, y, device, args, quality,
                                             sampler="trajectory-denoise", **at_t_d)
    if denoiser is not None:
        res["denoiser"] = {"path": str(den_ck.path), "step": den_ck.step, "t_d": t_d,
                           "parameters": sum(p.numel() for p in denoiser.parameters())}
        res["denoised"] = eval_sampler(r.model, n, y, device, args, quality,
                                       denoiser=denoiser, **at_t_d)


def t_min_of(r: Run, args) -> float:
    """``--t-min``, else the model's ``t_min_max`` (the default t_d of ``ntm distill``)."""
    return args.t_min if args.t_min is not None else float(r.config.model["t_min_max"])


def _print(res: Dict[str, Any]) -> None:
    for k, v in res.items():
        if not isinstance(v, dict):
            print(f"{k:32s} {v:.4f}" if isinstance(v, float) else f"{k:32s} {v}")
        elif ("sample_ms_per_sample" in v or k.endswith("_per_steps") or "bpd" in k
              or "nats_per_dim" in k):
            flat = {kk: vv for kk, vv in v.items() if isinstance(vv, float)}
            if flat:
                print(f"{k:32s} " + ", ".join(f"{kk} {vv:.4f}" for kk, vv in flat.items()))
            for kk, vv in v.items():
                if isinstance(vv, dict):
                    _print({f"{k}[{kk}]": vv})


def run(args, parser) -> int:
    if args.denoiser is not None and args.n_samples == 0:
        parser.error("--denoiser evaluates the denoised sampler: it needs --n-samples > 0, "
                     "got --n-samples 0")
    device = setup_device(args)
    t_start = time.perf_counter()
    r = load_run(args.checkpoint, device, ema=not args.no_ema, log=log)
    cfg, ck = r.config, r.checkpoint
    res: Dict[str, Any] = {"checkpoint": str(ck.path), "step": ck.step, "dataset": cfg.dataset,
                           "class_conditional": cfg.conditional,
                           "weights": "raw" if args.no_ema else "ema",
                           "steps": args.steps or default_sample_steps(cfg),
                           "temperature": args.temperature, "guidance": args.guidance,
                           "seed": args.seed, "train_elapsed_s": ck.state.get("elapsed_s"),
                           "model_code_matches": ck.state.get("model_code_sha256") ==
                           model_code_fingerprint()}
    if cfg.data.cond is not None:
        res["condition_tokens"] = cfg.data.cond
    res.update(likelihood(r, args, device))
    if args.n_samples > 0:
        samplers(r, args, device, res)
    res["eval_wall_s"] = time.perf_counter() - t_start
    out = Path(args.out) if args.out else r.run_dir / "eval.json"
    atomic_write_text(out, json.dumps(res, indent=1) + "\n")
    _print(res)
    print(f"wrote {out}")
    return 0
