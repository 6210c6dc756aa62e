"""Evaluation metrics: bits/dim aggregation, Frechet distance, and a small digits classifier.

* :func:`dataset_bits_per_dim` -- mean bits/dim (``t_0 = 0`` bound) of a model over a dataset
  (:func:`dataset_nats_per_dim`: nats/dim of continuous data, latents);
  :func:`dataset_fm_loss` -- the same for a flow-matching model's loss.
* :func:`sqrtm_psd`, :func:`frechet_distance` -- pure-torch (float64 eigendecomposition), no scipy.
* :class:`DigitsClassifier` + :func:`load_or_train_classifier` -- a small CNN on the 8x8 digits,
  trained with a fixed seed and cached on disk (``$NTM_CACHE_DIR`` or ``~/.cache/ntm_engine``),
  whose penultimate features are the space of the Frechet distance.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn
from torch.nn import functional as F

from .checkpoint import atomic_write_bytes
from .data import DIGITS_BINS, dequantize, load_digits

# ----------------------------------------------------------------------------- bits/dim


@torch.no_grad()
def per_sample_values(per_sample: Callable[[Tensor, Optional[Tensor], torch.Generator], Tensor],
                      x: Tensor, y: Optional[Tensor] = None, bins: int = DIGITS_BINS,
                      batch_size: int = 512, seed: int = 0, dequantize_data: bool = True,
                      device=None) -> Tensor:
    """``per_sample(x_batch, y_batch, generator) [b]`` over ``x`` in batches on ``device``, as
    one float64 CPU tensor ``[N]`` in the data's order (fixed noise from ``seed``: the data's
    dequantisation noise, ``bins`` bins, when ``dequantize_data``, and a ``generator`` for
    the model's draws)."""
    g_data = torch.Generator().manual_seed(seed)
    g_model = torch.Generator(device=device).manual_seed(seed + 1)
    vals = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        if dequantize_data:
            xb = dequantize(xb, bins, generator=g_data)
        yb = None if y is None else y[i:i + batch_size].to(device)
        vals.append(per_sample(xb.to(device), yb, g_model).double())   # no per-batch sync
    return torch.cat(vals).cpu() if vals else torch.zeros(0, dtype=torch.float64)


def dataset_mean(per_sample: Callable[[Tensor, Optional[Tensor], torch.Generator], Tensor],
                 x: Tensor, y: Optional[Tensor] = None, bins: int = DIGITS_BINS,
                 batch_size: int = 512, seed: int = 0, dequantize_data: bool = True,
                 device=None) -> Dict[str, float]:
    """Mean and standard error of :func:`per_sample_values` (same arguments)."""
    v = per_sample_values(per_sample, x, y, bins, batch_size, seed, dequantize_data, device)
    n = len(v)
    sem = float(v.std() / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(v.mean()), "sem": sem, "n": n}


def dataset_bits_per_dim(model, x: Tensor, y: Optional[Tensor] = None, bins: int = DIGITS_BINS,
                         batch_size: int = 512, seed: int = 0, dequantize_data: bool = True,
                         device=None, *, samples: int = 1, steps: Optional[int] = None
                         ) -> Dict[str, float]:
    """Mean and standard error of ``model.bits_per_dim`` over ``x`` (fixed noise from ``seed``).

    ``dequantize_data`` adds uniform noise of one grey level (the bound is on the dequantised
    density; ``bins`` sets the bin width ``2/bins``): first, from ``seed``, for ``samples = 1``;
    for ``samples = K > 1`` (the importance-weighted bound) the model draws it afresh for each
    trajectory (``bits_per_dim(..., dequantize=True)``), so the bound tends to the discrete
    bits/dim.  ``samples`` and ``steps`` (the grid's T; None: the model's default) are passed
    to ``model.bits_per_dim`` when they differ from those defaults, so any model with
    ``bits_per_dim(x, y, bins=, generator=)`` can be measured at ``K = 1``.
    """
    per_sample, dequantize_first = bits_per_dim_of(model, bins, samples, dequantize_data)
    return _dataset_likelihood("bpd", per_sample, model, x, y, bins, batch_size, seed,
                               dequantize_first, device, samples, steps)


def bits_per_dim_of(model, bins: int, samples: int, dequantize_data: bool):
    """``(per_sample(x, y, generator, **kw), dequantize_first)``: ``model.bits_per_dim`` of a
    batch, and whether the data must be dequantised before (``K = 1``) or the model draws the
    noise with each of its ``K > 1`` trajectories (:func:`dataset_bits_per_dim`)."""
    in_model = dequantize_data and samples > 1
    extra = {"dequantize": True} if in_model else {}
    return ((lambda xb, yb, g, **kw: model.bits_per_dim(xb, yb, bins=bins, generator=g,
                                                        **extra, **kw)),
            dequantize_data and not in_model)


def dataset_nats_per_dim(model, x: Tensor, y: Optional[Tensor] = None, bins: int = 0,
                         batch_size: int = 512, seed: int = 0, dequantize_data: bool = False,
                         device=None, *, samples: int = 1, steps: Optional[int] = None
                         ) -> Dict[str, float]:
    """Mean and standard error of ``model.nats_per_dim`` over continuous data ``x``
    (latents: never dequantised, whatever ``bins`` and ``dequantize_data`` say; the
    arguments are :func:`dataset_bits_per_dim`'s): ``{"nats_per_dim", "nats_per_dim_sem",
    "n"}``."""
    return _dataset_likelihood(
        "nats_per_dim", lambda xb, yb, g, **kw: model.nats_per_dim(xb, yb, generator=g, **kw),
        model, x, y, 0, batch_size, seed, False, device, samples, steps)


def _dataset_likelihood(key: str, per_sample, model, x, y, bins, batch_size, seed,
                        dequantize_data, device, samples, steps) -> Dict[str, float]:
    """``{key, key_sem, n}`` of ``per_sample(x, y, generator, **extra)`` over ``x``;
    ``extra`` holds ``samples``/``steps`` only when they differ from the defaults."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    extra = {**({"samples": samples} if samples != 1 else {}),
             **({"steps": steps} if steps is not None else {})}
    r = dataset_mean(lambda xb, yb, g: per_sample(xb, yb, g, **extra),
                     x, y, bins, batch_size, seed, dequantize_data, device)
    return {key: r["mean"], f"{key}_sem": r["sem"], "n": r["n"]}


def dataset_fm_loss(model, x: Tensor, y: Optional[Tensor] = None, bins: int = DIGITS_BINS,
                    batch_size: int = 512, seed: int = 0, dequantize_data: bool = True,
                    device=None) -> Dict[str, float]:
    """Mean and standard error of a flow-matching model's loss (per sample, summed over
    dimensions; :meth:`~ntm_engine.models.FlowMatchingModel.loss`) over ``x``, as
    :func:`dataset_bits_per_dim` (fixed noise from ``seed``)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    r = dataset_mean(lambda xb, yb, g: model.loss(xb, yb, generator=g),
                     x, y, bins, batch_size, seed, dequantize_data, device)
    return {"fm_loss": r["mean"], "fm_loss_sem": r["sem"], "n": r["n"]}


# ----------------------------------------------------------------------------- Frechet distance


def sqrtm_psd(a: Tensor) -> Tensor:
    """Principal square root of a symmetric positive semi-definite matrix (float64 ``eigh``)."""
    a = a.double()
    a = 0.5 * (a + a.T)
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """``|mu1-mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` -- the squared 2-Wasserstein
    distance between two Gaussians.  Symmetric-form square roots keep it real and stable."""
    mu1, mu2 = mu1.detach().double(), mu2.detach().double()
    sigma1, sigma2 = sigma1.detach().double(), sigma2.detach().double()
    r1 = sqrtm_psd(sigma1)
    m = r1 @ sigma2 @ r1
    m = 0.5 * (m + m.T)
    tr_cross = torch.linalg.eigvalsh(m).clamp_min(0).sqrt().sum()
    d = float(((mu1 - mu2) ** 2).sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * tr_cross)
    return max(d, 0.0)


def feature_stats(f: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean and (unbiased) covariance of features ``[N, d]`` in float64."""
    f = f.detach().double()
    mu = f.mean(0)
    fc = f - mu
    return mu, fc.T @ fc / max(len(f) - 1, 1)


def frechet_distance_features(f1: Tensor, f2: Tensor) -> float:
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def frechet_distance_to(reference: Tensor) -> Callable[[Tensor], float]:
    """``distance(f [N, d]) -> float``: :func:`frechet_distance_features` of ``f`` and the
    fixed ``reference [M, d]``, whose mean and covariance are computed once here."""
    ref_stats = feature_stats(reference)
    return lambda f: frechet_distance(*feature_stats(f), *ref_stats)


# ----------------------------------------------------------------------------- classifier

CLASSIFIER_VERSION = "mlp-v1"
CLASSIFIER_SEED = 1234
FEATURE_DIM = 128


class DigitsClassifier(nn.Module):
    """A small MLP for ``[B, 1, 8, 8]`` digits in [-1, 1]; ``features`` is the 128-d layer
    before the logits (the Frechet distance's feature space)."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                                  nn.Linear(hidden, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def default_cache_dir() -> Path:
    env = os.environ.get("NTM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ntm_engine"


def default_classifier_path() -> Path:
    return default_cache_dir() / f"digits_classifier_{CLASSIFIER_VERSION}.safetensors"


def train_classifier(epochs: int = 30, batch_size: int = 64, seed: int = CLASSIFIER_SEED,
                     log=None) -> Tuple[DigitsClassifier, float]:
    """Train on the train split (dequantisation noise and +-1 pixel shifts as augmentation);
    return the model (eval mode) and its test-split accuracy.  Runs on one thread: the net is
    tiny, and on shared cores extra threads only make it slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_classifier(epochs, batch_size, seed, log)
    finally:
        torch.set_num_threads(threads)


def _train_classifier(epochs, batch_size, seed, log):
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = DigitsClassifier()
    x, y = load_digits("train")
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            xb = dequantize(x[idx], DIGITS_BINS, generator=g)
            shift = torch.randint(-1, 2, (2,), generator=g).tolist()
            if torch.rand((), generator=g) < 0.5:
                xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    acc = classifier_accuracy(net, *load_digits("test"))
    if log:
        log(f"trained digits classifier: test accuracy {acc:.4f}")
    return net, acc


@torch.no_grad()
def classifier_accuracy(net: DigitsClassifier, x: Tensor, y: Tensor) -> float:
    return float((net(x).argmax(1) == y).float().mean())


def load_or_train_classifier(path=None, log=None) -> Tuple[DigitsClassifier, Dict[str, str]]:
    """The cached classifier at ``path`` (default :func:`default_classifier_path`), training and
    caching it (atomically) first if it is missing or unreadable."""
    path = Path(path) if path is not None else default_classifier_path()
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if meta.get("version") != CLASSIFIER_VERSION:
                raise ValueError(f"version {meta.get('version')!r} != {CLASSIFIER_VERSION!r}")
            net = DigitsClassifier()
            net.load_state_dict(load_file(str(path)))
            net.eval()
            return net, dict(meta, path=str(path), cached="true")
        except Exception as e:  # corrupt or stale cache: retrain
            if log:
                log(f"cached classifier {path} unusable ({e}); retraining")
    net, acc = train_classifier(log=log)
    meta = {"version": CLASSIFIER_VERSION, "seed": str(CLASSIFIER_SEED), "test_accuracy": f"{acc:.6f}"}
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in net.state_dict().items()}, meta))
    return net, dict(meta, path=str(path), cached="false")


def quantize_digits(x: Tensor, bins: int = DIGITS_BINS) -> Tensor:
    """Clamp to [-1, 1] and snap to the bin centres of ``bins`` grey bins (like the data)."""
    v = ((x.clamp(-1, 1) + 1) / 2 * bins).floor().clamp(0, bins - 1)
    return (v + 0.5) / bins * 2 - 1


@torch.no_grad()
def sample_quality(net: DigitsClassifier, samples: Tensor, labels: Optional[Tensor],
                   reference: Tensor) -> Dict[str, float]:
    """Classifier accuracy of (class-conditional) samples and the Frechet distance between the
    classifier features of the samples and of ``reference`` images.  Samples are quantised to
    the data's grey bins first."""
    s = quantize_digits(samples.float().cpu())
    logits = net(s)
    pred = logits.argmax(1)
    out: Dict[str, float] = {}
    if labels is not None:
        out["class_accuracy"] = float((pred == labels.cpu()).float().mean())
    hist = torch.bincount(pred, minlength=10).double() / len(pred)
    out["predicted_class_entropy_bits"] = float(-(hist[hist > 0] * hist[hist > 0].log2()).sum())
    out["mean_max_softmax"] = float(logits.softmax(1).max(1).values.mean())
    out["frechet_distance"] = frechet_distance_features(net.features(s), net.features(reference))
    return out
