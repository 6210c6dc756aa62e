"""``ntm score``: one bits/dim per image (nats/dim per latent) under a trained NTM, in the
data's order, written to a CSV with a histogram next to it
(:mod:`ntm_engine.training.scoring`): the exact likelihood as a product -- anomaly detection,
data filtering, model comparison."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import plots
from ..checkpoint import atomic_write_text
from ..condition import Condition
from ..models import NTM
from ..training import ConfigError, DataConfig, eval_bins, load_run, run_data
from ..training.scoring import image_bits_per_dim, latent_nats_per_dim
from .common import HelpFormatter, add_device_options, log, positive_int, setup_device

SPLITS = ("test", "train", "all")


def add_parser(sub) -> None:
    s = sub.add_parser(
        "score", help="bits/dim of every image under a trained NTM, to a CSV and a histogram",
        formatter_class=HelpFormatter,
        description="Score images by the model's likelihood: per image, the importance-weighted "
        "bound on bits/dim (lower: more likely), in the data's order, to --out (CSV: index, "
        "label, bits_per_dim) and a histogram beside it (.png).  A model of latents scores "
        "each latent in nats/dim (column nats_per_dim: the continuous density, no bins).  A "
        "conditional model scores p(x) (its unconditional branch) unless --labels / --cond.")
    s.add_argument("run", help="run folder, checkpoint, or exported folder (ntm export)")
    s.add_argument("--dataset", default=None,
                   help="images to score, as ntm train --dataset (default: the run's data); "
                   "they are resized to the model's image size and channels")
    s.add_argument("--split", choices=SPLITS, default="test",
                   help="which split of the data (all: train then test)")
    s.add_argument("--bpd-samples", type=positive_int, default=16, metavar="K",
                   help="forward trajectories per image, each with its own dequantisation "
                   "noise (the importance-weighted bound)")
    s.add_argument("--labels", action="store_true",
                   help="score p(x | y) with the data's labels (class-conditional models)")
    s.add_argument("--cond", nargs="?", const=True, default=None, metavar="FILE",
                   help="score p(x | tokens) with each image's condition tokens (runs trained "
                   "with --cond): alone, those of the run's data (or of the .npz --dataset); "
                   "with FILE, a token file for --dataset as ntm train --cond FILE")
    s.add_argument("--steps", type=positive_int, default=None,
                   help="the grid's T (default: the model's first trained T)")
    s.add_argument("--batch-size", type=positive_int, default=256)
    s.add_argument("--seed", type=int, default=0, help="seed of the dequantisation and "
                   "trajectory noise")
    s.add_argument("--no-ema", action="store_true", help="the raw weights, not the EMA")
    s.add_argument("--out", default=None, help="the CSV (default: RUN/scores.csv)")
    add_device_options(s)
    s.set_defaults(handler=run)


def cond_for_score(r, dataset: Optional[str], cond) -> Optional[str]:
    """Where the tokens of ``--cond [FILE]`` come from (a ``DataConfig.cond``): FILE; alone,
    the run's own token source (scoring its data) or the ``.npz`` ``--dataset`` itself."""
    if cond is None:
        return None
    if not getattr(r.model, "cond_dim", 0):
        raise ConfigError("--cond: the model has no condition tokens (cond_dim=0)")
    if cond is not True:
        return cond
    if dataset is None:
        if r.config.data.cond is None:
            raise ConfigError("--cond: the run records no token source for its data; give the "
                              "token file as --cond FILE")
        return r.config.data.cond
    if not dataset.lower().endswith(".npz"):
        raise ConfigError(f"--cond without a FILE takes the tokens of the .npz --dataset; "
                          f"--dataset {dataset} is not one: give the token file as --cond FILE")
    return dataset


def images_to_score(r, dataset: Optional[str], split: str, labels: bool, cond=None
                    ) -> Tuple[Tensor, Optional[Tensor], str, Optional[Condition]]:
    """``(images [N, *data_shape], labels [N] or None, what, tokens)`` of ``--dataset``
    (default: the run's own data), sized for the run's model (latents: as stored); ``tokens``:
    with ``--cond`` (:func:`cond_for_score`), the images' condition tokens as a Condition
    without labels."""
    shape = tuple(r.model.data_shape)
    if len(shape) != 3:
        raise ConfigError(f"ntm score needs an image model; {r.checkpoint.path} is for data of "
                          f"shape {list(shape)}")
    name = dataset or r.config.dataset
    latent = r.config.latent
    source = cond_for_score(r, dataset, cond)
    data = run_data(DataConfig(name, False, cond=source) if latent else
                    DataConfig(name, False, image_size=shape[1], channels=shape[0],
                               cond=source))
    if latent and not data.continuous:
        raise ConfigError(f"--dataset {name}: images ({data.summary()}); the model scores "
                          f"latents of shape {list(shape)} (an .npz with a 'latents' array)")
    parts = ("train", "test") if split == "all" else (split,)
    tokens = None
    if source is not None:
        cs = [data.split_cond(p) for p in parts]
        if cs[0].dim != r.model.cond_dim:
            raise ConfigError(f"--cond {source}: tokens of {cs[0].dim} features, the model "
                              f"takes {r.model.cond_dim}")
        if len({c.tokens.shape[1] for c in cs}) > 1:
            raise ConfigError(f"--cond {source}: the splits' token sequences differ in length "
                              f"L; score one split at a time")
        mask = None
        if any(c.mask is not None for c in cs):
            mask = torch.cat([torch.ones(c.tokens.shape[:2], dtype=torch.bool) if c.mask is None
                              else c.mask for c in cs])
        tokens = Condition(None, torch.cat([c.tokens for c in cs]), mask)
    xs, ys = zip(*(data.tensors(p) for p in parts))
    x = torch.cat(xs)
    y = None if any(v is None for v in ys) else torch.cat(ys)
    if tuple(x.shape[1:]) != shape:
        raise ConfigError(f"--dataset {name}: images of shape {list(x.shape[1:])}, the model "
                          f"scores {list(shape)}")
    if labels:
        if not getattr(r.model, "num_classes", 0):
            raise ConfigError("--labels: the model is not class-conditional")
        if y is None:
            raise ConfigError(f"--labels: --dataset {name} has no labels")
        if int(y.max()) >= r.model.num_classes:
            raise ConfigError(f"--labels: --dataset {name} has label {int(y.max())}, the model "
                              f"knows {r.model.num_classes} classes")
    return x, y, f"{name} ({split}, {len(x)} {'latents' if latent else 'images'})", tokens


def write_scores(path: Path, bpd: Tensor, labels: Optional[Tensor],
                 column: str = "bits_per_dim") -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "label", column])
    for i, v in enumerate(bpd.tolist()):
        w.writerow([i, "" if labels is None else int(labels[i]), f"{v:.6f}"])
    atomic_write_text(path, buf.getvalue())
    return path


def run(args, parser) -> int:
    device = setup_device(args)
    r = load_run(args.run, device, ema=not args.no_ema, log=log)
    if not isinstance(r.model, NTM):
        raise ConfigError(f"ntm score needs an NTM run; {r.checkpoint.path} holds a "
                          f"{type(r.model).__name__}")
    x, y, what, tokens = images_to_score(r, args.dataset, args.split, args.labels, args.cond)
    given = y if args.labels else None
    if tokens is not None:
        given = Condition(given, tokens.tokens, tokens.mask)
    opts = dict(samples=args.bpd_samples, batch_size=args.batch_size, seed=args.seed,
                steps=args.steps, device=device)
    if r.config.latent:
        bpd = latent_nats_per_dim(r.model, x, given, **opts)
        column, unit, how = "nats_per_dim", "nats/dim", "continuous"
    else:
        bins = eval_bins(r.config.data)
        bpd = image_bits_per_dim(r.model, x, given, bins=bins, **opts)
        column, unit, how = "bits_per_dim", "bits/dim", f"{bins} bins"
    out = Path(args.out) if args.out else r.run_dir / "scores.csv"
    write_scores(out, bpd, y, column)
    kind = {(False, False): "p(x)", (True, False): "p(x | y)", (False, True): "p(x | tokens)",
            (True, True): "p(x | y, tokens)"}[(bool(args.labels), tokens is not None)]
    png = plots.save_histograms({what: bpd}, out.with_suffix(".png"), xlabel=unit,
                                title=f"{kind}, K = {args.bpd_samples}, {how}")
    finite = bpd[torch.isfinite(bpd)]
    log(f"ntm score: {what} under {r.checkpoint.path}: {unit} of {kind}, mean "
        f"{float(finite.mean()) if len(finite) else math.nan:.4f}, median "
        f"{float(finite.median()) if len(finite) else math.nan:.4f}; wrote {out} and {png}")
    return 0
