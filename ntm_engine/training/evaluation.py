"""Held-out evaluation of a trained model: test bits/dim of an NTM (nats/dim on latents), the
test loss of a flow-matching model, the sample grid of a run, and the one-line summaries."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from .. import checkpoint as ckpt
from .. import plots
from ..data import eight_gaussian_modes, load_digits
from ..metrics import (dataset_bits_per_dim, dataset_fm_loss, dataset_nats_per_dim,
                       frechet_distance_to)
from ..models import histogram_bits_per_dim
from ..models.flow_matching import EULER_STEPS
from ..models.schedule import step_counts
from .batches import eval_bins, sample_conditions, test_data
from .config import TrainConfig
from .decoder import Decoder
from .determinism import device_generator
from .sections import DataConfig


def _evaluate(metric, model, cfg: TrainConfig, device, *, seed: int,
              unconditional: bool = False, **kw) -> Dict[str, float]:
    x, y = test_data(cfg.data)
    was = model.training
    model.eval()
    try:
        return metric(model, x, None if unconditional else y, bins=eval_bins(cfg.data),
                      batch_size=cfg.run.eval_batch, seed=seed,
                      dequantize_data=cfg.data.is_image and not cfg.latent, device=device,
                      **kw)
    finally:
        model.train(was)


def likelihood_key(cfg) -> str:
    """The name of a run's likelihood figure: ``"bpd"`` (bits/dim of quantised data, and of
    the toys), ``"nats_per_dim"`` for latents (no bins: the continuous density)."""
    return "nats_per_dim" if TrainConfig.coerce(cfg).latent else "bpd"


def evaluate_bpd(model, cfg, device, *, seed: int = 0, samples: int = 1,
                 steps: Optional[int] = None, unconditional: bool = False) -> Dict[str, float]:
    """Test bits/dim of an NTM (``bpd``, ``bpd_sem``, ``n``;
    :func:`~ntm_engine.metrics.dataset_bits_per_dim`), or of a latent run nats/dim
    (``nats_per_dim``, ``nats_per_dim_sem``, ``n``: :func:`likelihood_key`;
    :func:`~ntm_engine.metrics.dataset_nats_per_dim`): the bound over ``samples``
    trajectories (importance-weighted for K > 1) on the grid of ``steps`` (None: the model's
    default T); ``unconditional``: a class-conditional model scores the null label."""
    cfg = TrainConfig.coerce(cfg)
    metric = dataset_nats_per_dim if cfg.latent else dataset_bits_per_dim
    return _evaluate(metric, model, cfg, device, seed=seed, samples=samples, steps=steps,
                     unconditional=unconditional)


def histogram_bpd(cfg) -> Dict[str, float]:
    """The per-pixel histogram baseline on the same test split (digits only; empty for
    toys): bits/dim of independent per-pixel categoricals fit on the training split, and
    (``conditional``) one set per class for a class-conditional run."""
    cfg = TrainConfig.coerce(cfg)
    if cfg.dataset != "digits":
        return {}
    (xtr, ytr), (xte, yte) = load_digits("train"), load_digits("test")
    bins = eval_bins(cfg.data)
    out = {"bpd": float(histogram_bits_per_dim(xtr, xte, bins).mean())}
    if cfg.conditional:
        out["bpd_conditional"] = float(histogram_bits_per_dim(
            xtr, xte, bins, train_y=ytr, test_y=yte).mean())
    return out


def evaluate_test(model, cfg, device, *, seed: int = 0) -> Dict[str, float]:
    """The test metrics of the objective: bits/dim (``bpd``, ``bpd_sem``, ``n``; latents:
    ``nats_per_dim``...) of an NTM, the loss (``fm_loss``, ``fm_loss_sem``, ``n``) of a
    flow-matching model."""
    cfg = TrainConfig.coerce(cfg)
    if cfg.objective.objective == "flow_matching":
        return _evaluate(dataset_fm_loss, model, cfg, device, seed=seed)
    return evaluate_bpd(model, cfg, device, seed=seed)


def raw_quality(data: DataConfig) -> Callable[[Tensor], Dict[str, float]]:
    """The rating ``ntm eval`` gives samples of data other than digits (images without a
    classifier, toys): ``quality(s [n, *shape]) -> {"frechet_distance_raw": ...}``, the
    Frechet distance between the raw values (flattened to ``[n, prod(shape)]``) of ``s`` and
    of the test split (:func:`~.batches.test_data`; lower is closer); eight Gaussians also get
    ``fraction_within_3std_of_a_mode``."""
    to_test = frechet_distance_to(test_data(data)[0].flatten(1))

    def quality(s: Tensor) -> Dict[str, float]:
        out = {"frechet_distance_raw": to_test(s.flatten(1))}
        if data.dataset == "eight_gaussians":
            d = torch.cdist(s, eight_gaussian_modes()).min(1).values
            out["fraction_within_3std_of_a_mode"] = float((d < 0.3).float().mean())
        return out
    return quality


FRECHET_MAX_DIMS = 4096      # the raw-value Frechet distance of decoded images up to this size
DECODED_REFERENCE = 2000     # test latents decoded as its reference


def latent_quality(data: DataConfig, decoder: Optional[Decoder] = None
                   ) -> Tuple[Callable[[Tensor], Dict[str, float]], str]:
    """``(quality, note)``: the rating ``ntm eval`` gives samples of latents,
    ``quality(s [n, C, H, W]) -> {"frechet_distance_latent": ...}``, the Frechet distance
    between the latents (the data's scale, flattened) of ``s`` and of the test split, and
    with a ``decoder`` ``"frechet_distance_decoded"``, the same between the decoded images of
    ``s`` and of the first :data:`DECODED_REFERENCE` test latents, when those have at most
    :data:`FRECHET_MAX_DIMS` values; ``note`` says what was measured and what was not."""
    x_test = test_data(data)[0]
    note = ("frechet_distance_latent: Frechet distance of the raw latents to the test "
            "split's (no pixel measure on latents)")
    ref = None
    if decoder is None:
        note += "; no --decoder: no measure on images"
    else:
        ref = decoder(x_test[:DECODED_REFERENCE]).flatten(1)
        if ref.shape[1] > FRECHET_MAX_DIMS:
            note += (f"; frechet_distance_decoded skipped: decoded images have {ref.shape[1]} "
                     f"values, the raw-pixel Frechet distance is taken up to "
                     f"{FRECHET_MAX_DIMS}")
            ref = None
        else:
            note += (f"; frechet_distance_decoded: of the decoded samples to {len(ref)} "
                     f"decoded test latents (raw pixels)")

    to_test = frechet_distance_to(x_test.flatten(1))
    to_decoded = None if ref is None else frechet_distance_to(ref)

    def quality(s: Tensor) -> Dict[str, float]:
        out = {"frechet_distance_latent": to_test(s.flatten(1))}
        if to_decoded is not None:
            out["frechet_distance_decoded"] = to_decoded(decoder(s).flatten(1))
        return out
    return quality, note


def default_sample_steps(cfg) -> int:
    """Sampling steps when none are asked for: the (smallest) trained T of an NTM, the Euler
    steps of a flow-matching model."""
    cfg = TrainConfig.coerce(cfg)
    if cfg.objective.objective == "flow_matching":
        return EULER_STEPS
    return step_counts(cfg.model["steps"])[0]


def eval_summary(rec: Dict[str, Any]) -> str:
    """One line for an evaluation record: test bits/dim (nats/dim of latents), or the test
    loss of an FM model."""
    if "test_bpd" in rec:
        return f"test bits/dim {rec['test_bpd']:.4f}"
    if "test_nats_per_dim" in rec:
        return f"test nats/dim {rec['test_nats_per_dim']:.4f}"
    return f"test flow-matching loss {rec['test_fm_loss']:.4f}"


def grid_samples(model, cfg: TrainConfig, *, device) -> Tensor:
    """The samples of a run's grid (fixed noise): ``[n, *data_shape]`` with ``n`` the
    config's ``eval_samples`` (toys: at least 1000), labels cycled for a conditional run
    (condition tokens: those of test items, :func:`~.batches.sample_conditions`)."""
    n = cfg.eval_samples if cfg.data.is_image else max(cfg.eval_samples, 1000)
    y, _ = sample_conditions(cfg.data, n)
    g = device_generator(device, 12345)
    return model.sample(n, y=None if y is None else y.to(device), generator=g)


def grid_images(samples: Tensor, cfg: TrainConfig, decoder: Optional[Decoder] = None
                ) -> Tuple[Tensor, Optional[str]]:
    """``(images [n, 1 or 3, h, w] in [-1, 1], title or None)`` that show ``samples [n,
    *data_shape]`` in a grid: images as they are; latents decoded by ``decoder`` (its [0, 1]
    mapped to [-1, 1]), or without one their first channels
    (:func:`~ntm_engine.plots.latent_preview`, normalised by the run's channel statistics)
    under a title that says so."""
    if not cfg.latent:
        return samples, None
    if decoder is not None:
        return decoder(samples) * 2 - 1, None
    images, what = plots.latent_preview(samples, cfg.model["channel_mean"],
                                        cfg.model["channel_scale"])
    return images, f"latents, {what}"


def save_sample_grid(model, cfg: TrainConfig, *, device, run_dir, step: int,
                     samples: Optional[Tensor] = None, decoder: Optional[Decoder] = None
                     ) -> Path:
    """Samples of ``model`` (:func:`grid_samples`, or ``samples`` already drawn) as
    ``samples/step_N.png`` and ``samples.png`` of the run folder; images (grey or RGB) as a
    grid (latents: :func:`grid_images`, decoded by ``decoder`` when given), toys (at least
    1000 points) as a scatter over test data."""
    s = grid_samples(model, cfg, device=device) if samples is None else samples
    n = s.shape[0]
    folder = Path(run_dir) / "samples"
    folder.mkdir(exist_ok=True)
    path = folder / f"step_{step:08d}.png"
    if cfg.data.is_image:
        images, title = grid_images(s.cpu(), cfg, decoder)
        plots.save_digit_grid(images, path, nrow=10, title=title)
    else:
        plots.save_toy_scatter(s.cpu(), path, reference=test_data(cfg.data)[0][:n],
                               title=f"{cfg.dataset} step {step}")
    ckpt.atomic_write_bytes(Path(run_dir) / "samples.png", path.read_bytes())
    return path
