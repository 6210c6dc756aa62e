"""``ntm sample``: draw samples from a trained run into a PNG grid (optionally ``.pt``/``.npy``/
``.npz``), timed; ``--denoiser`` samples on the ``t_0 = t_d`` grid with a distilled denoiser;
samples of latents are drawn through the run's ``--decoder`` (or shown as latents); ``--cond``
samples a run with condition tokens for the token sequences of a ``.npy`` file."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from .. import plots
from ..checkpoint import atomic_write_bytes
from ..condition import Condition, labels_of
from ..training import (TrainConfig, default_sample_steps, denoiser_for, grid_images, load_run,
                        run_decoder, test_data)
from .common import (HelpFormatter, add_device_options, int_list, log, nonneg_float,
                     positive_int, setup_device,
                     timed_samples)


def add_parser(sub) -> None:
    s = sub.add_parser("sample", help="draw samples from a checkpoint into a PNG grid",
                       formatter_class=HelpFormatter)
    s.add_argument("checkpoint", help="run folder, its checkpoints/ folder, or a checkpoint folder")
    s.add_argument("-n", type=positive_int, default=None,
                   help="number of samples (default 100, or the sequences of an [N, L, C] "
                   "--cond file)")
    s.add_argument("--labels", default=None,
                   help="class-conditional models: comma-separated labels cycled over the "
                   "samples, 'all' (0..K-1 cycled for K classes; the default) or 'none' "
                   "(unconditional)")
    s.add_argument("--cond", default=None, metavar="FILE.npy",
                   help="runs with condition tokens: a .npy of one token sequence [L, C] for "
                   "every sample or one per sample [N, L, C] (float; C = the run's token size; "
                   "default: none, the learned null sequence)")
    s.add_argument("--cond-mask", default=None, metavar="FILE.npy",
                   help="with --cond: a .npy of bools [L] or [N, L], True = a real token, "
                   "False = padding (default: all real)")
    s.add_argument("--steps", type=steps_option, default=None, metavar="T|all",
                   help="sampling steps (default: the smallest trained T); 'all': one grid per "
                   "trained T, named <out>_<T>step.png")
    s.add_argument("--temperature", type=nonneg_float, default=1.0)
    s.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None,
                   help="PNG path of the grid (default: <run>/sample.png); a .npy, .npz or .pt "
                   "path writes the samples there (latents in their own scale; an .npz holds "
                   "'latents', or 'samples' of images in [-1, 1], and 'labels') and the grid "
                   "beside it as .png")
    s.add_argument("--decoder", default=None, metavar="MODULE:FUNCTION",
                   help="latent runs: the function that draws the latents as images "
                   "(default: the run's own --decoder, else the latents' first channels)")
    s.add_argument("--nrow", type=positive_int, default=10, help="digits per grid row")
    s.add_argument("--save-pt", action="store_true", help="also write the samples as .pt")
    s.add_argument("--save-npy", action="store_true", help="also write the samples as .npy")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    s.add_argument("--denoiser", default=None, metavar="DIR",
                   help="a denoiser made by `ntm distill`: sample with t_0 = its t_d and let it "
                   "replace the transporter inverse")
    s.add_argument("--sampler", choices=("transporter", "trajectory-denoise"),
                   default="transporter", help="decoder of the last level: the transporter "
                   "inverse, or the slow exact path (the whole trajectory through the flow, "
                   "then Tweedie denoising with the trajectory score; needs t_0 > 0)")
    s.add_argument("--t-min", type=nonneg_float, default=None, metavar="T_D",
                   help="t_0 of the grid (default 0; with --sampler trajectory-denoise: the "
                   "model's t_min_max, the default t_d of `ntm distill`)")
    add_device_options(s)
    s.set_defaults(handler=run)


def steps_option(s: str):
    """``--steps``: a positive integer, or ``"all"`` (every trained step count)."""
    return s if s == "all" else positive_int(s)


def step_outputs(steps, trained: List[int], out: Path) -> List[Tuple[Optional[int], Path]]:
    """``(T, path)`` per grid to draw: ``--steps all`` -> each trained ``T`` into
    ``<out stem>_<T>step<suffix>``; else ``(steps, out)``."""
    if steps != "all":
        return [(steps, out)]
    return [(T, out.with_name(f"{out.stem}_{T}step{out.suffix}")) for T in trained]


def labels(spec: Optional[str], cfg: TrainConfig, n: int) -> Optional[torch.Tensor]:
    """The labels ``[n]`` of ``--labels spec`` (None: unconditional sampling)."""
    if not cfg.conditional:
        if spec not in (None, "none"):
            raise SystemExit("ntm sample: error: --labels given but the model is unconditional")
        return None
    k = int(cfg.model["num_classes"])
    if spec in (None, "all"):
        return torch.arange(n) % k
    if spec == "none":
        return None
    vals = int_list(spec)
    if not vals or any(not 0 <= v < k for v in vals):
        raise SystemExit(f"ntm sample: error: --labels must be classes 0..{k - 1}, got "
                         f"{spec!r}")
    return torch.tensor(vals).repeat(math.ceil(n / len(vals)))[:n]


def _load_npy(path: str, what: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SystemExit(f"ntm sample: error: {what} {path}: not a readable .npy file ({e})")
    if not isinstance(a, np.ndarray):
        raise SystemExit(f"ntm sample: error: {what} {path}: expected a .npy array, got an "
                         f".npz archive")
    return a


def condition_tokens(args, model) -> Optional[Condition]:
    """The tokens (and mask) of ``--cond`` / ``--cond-mask`` as a Condition without labels,
    checked against the model (``cond_dim``) and ``-n`` (which an ``[N, L, C]`` file sets);
    None without ``--cond``.  Errors are SystemExit naming the option."""
    if args.cond is None:
        if args.cond_mask is not None:
            raise SystemExit("ntm sample: error: --cond-mask needs --cond (the tokens)")
        return None
    C = int(getattr(model, "cond_dim", 0))
    if not C:
        raise SystemExit("ntm sample: error: --cond: this run has no condition tokens "
                         "(cond_dim=0; trained without ntm train --cond)")
    a = _load_npy(args.cond, "--cond")
    if a.dtype.kind not in "fiu" or a.ndim not in (2, 3) or a.shape[-1] != C:
        raise SystemExit(f"ntm sample: error: --cond {args.cond}: expected float tokens [L, {C}] "
                         f"or [N, L, {C}] (the run's cond_dim = {C}), got {a.dtype} "
                         f"{list(a.shape)}")
    if not np.isfinite(a).all():
        raise SystemExit(f"ntm sample: error: --cond {args.cond}: expected finite values")
    if a.ndim == 3:
        if args.n is not None and args.n != a.shape[0]:
            raise SystemExit(f"ntm sample: error: --cond {args.cond} holds {a.shape[0]} "
                             f"sequences, one per sample, but -n {args.n}")
        args.n = a.shape[0]
    n = args.n or 100
    tokens = torch.from_numpy(a.astype(np.float32)).expand(n, *a.shape[-2:])
    mask = None
    if args.cond_mask is not None:
        m = _load_npy(args.cond_mask, "--cond-mask")
        if m.dtype != np.bool_ and not (m.dtype.kind in "iu" and np.isin(m, (0, 1)).all()):
            raise SystemExit(f"ntm sample: error: --cond-mask {args.cond_mask}: expected bools "
                             f"(True = a real token), got {m.dtype}")
        if tuple(m.shape) not in ((a.shape[-2],), tuple(a.shape[:-1])):
            raise SystemExit(f"ntm sample: error: --cond-mask {args.cond_mask}: expected shape "
                             f"{list(a.shape[:-1])} (the tokens' without C), got {list(m.shape)}")
        mask = torch.from_numpy(m.astype(bool)).expand(n, a.shape[-2])
    return Condition(None, tokens, mask)


ARRAY_SUFFIXES = (".npy", ".npz", ".pt")


def _save_array(x, y, path: Path, cfg: TrainConfig) -> str:
    """The samples ``x`` (labels ``y``, a Condition's labels, or None) as ``path`` (.npy: ``x``
    alone; .npz and .pt: with the labels; latents under ``latents``, so the file is a dataset
    again)."""
    y = labels_of(y)
    buf = io.BytesIO()
    suffix = path.suffix.lower()
    if suffix == ".pt":
        torch.save({"samples": x, "labels": y}, buf)
    elif suffix == ".npy":
        np.save(buf, x.numpy())
    else:
        arrays = {"latents" if cfg.latent else "samples": x.numpy()}
        if y is not None:
            arrays["labels"] = y.numpy()
        np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def _write(x, y, out: Path, args, cfg: TrainConfig, decoder=None) -> list:
    written = []
    if out.suffix.lower() in ARRAY_SUFFIXES:
        written.append(_save_array(x, y, out, cfg))
        out = out.with_suffix(".png")
    if cfg.data.is_image:
        images, title = grid_images(x, cfg, decoder)
        plots.save_digit_grid(images, out, nrow=args.nrow, title=title)
    else:
        plots.save_toy_scatter(x, out, reference=test_data(cfg.data)[0][:len(x)])
    written.append(str(out))
    for asked, suffix in ((args.save_pt, ".pt"), (args.save_npy, ".npy")):
        if asked and str(out.with_suffix(suffix)) not in written:
            written.append(_save_array(x, y, out.with_suffix(suffix), cfg))
    return written


def decoder_options(args, r, denoiser, t_d: float) -> dict:
    """:meth:`NTM.sample` options of ``--denoiser``, ``--sampler`` and ``--t-min``."""
    if args.sampler != "transporter" and denoiser is not None:
        raise SystemExit("ntm sample: error: --sampler trajectory-denoise and --denoiser are "
                         "two decoders of the last level; give one")
    if denoiser is not None:
        return {"t_min": t_d, "denoiser": denoiser}
    kw = {} if args.sampler == "transporter" else {
        "sampler": args.sampler, "t_min": float(r.config.model["t_min_max"])}
    if args.t_min is not None:
        kw["t_min"] = args.t_min
    return kw


def run(args, parser) -> int:
    device = setup_device(args)
    r = load_run(args.checkpoint, device, ema=not args.no_ema, log=log)
    tokens = condition_tokens(args, r.model)
    args.n = args.n or 100
    y = labels(args.labels, r.config, args.n)
    if tokens is not None:
        y = Condition(y, tokens.tokens, tokens.mask)
    if args.guidance and y is None:
        raise SystemExit("ntm sample: error: --guidance needs a conditional model and a "
                         "condition (labels, or condition tokens: --cond)")
    denoiser, t_d, den_ck = denoiser_for(args.denoiser, r, device, log)
    den_kw = decoder_options(args, r, denoiser, t_d)
    decoder = run_decoder(r.config, args.decoder)
    out = Path(args.out) if args.out else r.run_dir / "sample.png"
    trained = list(getattr(r.model, "trained_steps", [default_sample_steps(r.config)]))
    for T, path in step_outputs(args.steps, trained, out):
        x, dt = timed_samples(r.model, args.n, y, device, steps=T,
                              temperature=args.temperature, guidance=args.guidance,
                              seed=args.seed, **den_kw)
        written = _write(x, y, path, args, r.config, decoder)
        print(f"{args.n} samples from {r.checkpoint.path} (step {r.step}, "
              f"{'raw' if args.no_ema else 'EMA'} weights), "
              f"{T or default_sample_steps(r.config)} steps, temperature "
              f"{args.temperature}, guidance {args.guidance}"
              + ("" if denoiser is None else f", t_0 = {t_d} with the denoiser {den_ck.path}")
              + ("" if args.sampler == "transporter" else
                 f", t_0 = {den_kw['t_min']} with trajectory denoising")
              + f": {dt:.3f} s, {1e3 * dt / args.n:.3f} ms per sample on {device}")
        print("wrote " + ", ".join(written))
    return 0
