"""Held-out evaluation of a trained model: test bits/dim of an NTM, the test loss of a
flow-matching model, the sample grid of a run, and the one-line summaries."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor

from torch import Tensor

from .. import checkpoint as ckpt
from .. import plots
from ..data import eight_gaussian_modes, load_digits
from ..metrics import dataset_bits_per_dim, dataset_fm_loss, frechet_distance_features
from ..models import histogram_bits_per_dim
from ..models.flow_matching import EULER_STEPS
from ..models.schedule import step_counts
from .batches import eval_bins, sample_conditions, test_data
from .config import TrainConfig
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
                      dequantize_data=cfg.data.is_image, device=device, **kw)
    finally:
        model.train(was)


def evaluate_bpd(model, cfg, device, *, seed: int = 0, samples: int = 1,
                 steps: Optional[int] = None, unconditional: bool = False) -> Dict[str, float]:
    """Test bits/dim of an NTM (``bpd``, ``bpd_sem``, ``n``;
    :func:`~ntm_engine.metrics.dataset_bits_per_dim`): the bound over ``samples`` trajectories
    (importance-weighted for K > 1) on the grid of ``steps`` (None: the model's default T);
    ``unconditional``: a class-conditional model scores the null label."""
    return _evaluate(dataset_bits_per_dim, model, TrainConfig.coerce(cfg), device, seed=seed,
                     samples=samples, steps=steps, unconditional=unconditional)


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
    """The test metrics of the objective: bits/dim (``bpd``, ``bpd_sem``, ``n``) of an NTM,
    the loss (``fm_loss``, ``fm_loss_sem``, ``n``) of a flow-matching model."""
    cfg = TrainConfig.coerce(cfg)
    if cfg.objective.objective == "flow_matching":
        return _evaluate(dataset_fm_loss, model, cfg, device, seed=seed)
    return _evaluate(dataset_bits_per_dim, model, cfg, device, seed=seed)


def raw_quality(data: DataConfig) -> Callable[[Tensor], Dict[str, float]]:
    """The rating ``ntm eval`` gives samples of data other than digits (images without a
    classifier, toys): ``quality(s [n, *shape]) -> {"frechet_distance_raw": ...}``, the
    Frechet distance between the raw values (flattened to ``[n, prod(shape)]``) of ``s`` and
    of the test split (:func:`~.batches.test_data`; lower is closer); eight Gaussians also get
    ``fraction_within_3std_of_a_mode``."""
    x_test = test_data(data)[0].flatten(1)

    def quality(s: Tensor) -> Dict[str, float]:
        out = {"frechet_distance_raw": frechet_distance_features(s.flatten(1), x_test)}
        if data.dataset == "eight_gaussians":
            d = torch.cdist(s, eight_gaussian_modes()).min(1).values
            out["fraction_within_3std_of_a_mode"] = float((d < 0.3).float().mean())
        return out
    return quality


def default_sample_steps(cfg) -> int:
    """Sampling steps when none are asked for: the (smallest) trained T of an NTM, the Euler
    steps of a flow-matching model."""
    cfg = TrainConfig.coerce(cfg)
    if cfg.objective.objective == "flow_matching":
        return EULER_STEPS
    return step_counts(cfg.model["steps"])[0]


def eval_summary(rec: Dict[str, Any]) -> str:
    """One line for an evaluation record: test bits/dim, or the test loss of an FM model."""
    if "test_bpd" in rec:
        return f"test bits/dim {rec['test_bpd']:.4f}"
    return f"test flow-matching loss {rec['test_fm_loss']:.4f}"


def grid_samples(model, cfg: TrainConfig, *, device) -> Tensor:
    """The samples of a run's grid (fixed noise): ``[n, *data_shape]`` with ``n`` the
    config's ``eval_samples`` (toys: at least 1000), labels cycled for a conditional run
    (condition tokens: those of test items, :func:`~.batches.sample_conditions`)."""
    n = cfg.eval_samples if cfg.data.is_image else max(cfg.eval_samples, 1000)
    y, _ = sample_conditions(cfg.data, n)
    g = device_generator(device, 12345)
    return model.sample(n, y=None if y is None else y.to(device), generator=g)


def save_sample_grid(model, cfg: TrainConfig, *, device, run_dir, step: int,
                     samples: Optional[Tensor] = None) -> Path:
    """Samples of ``model`` (:func:`grid_samples`, or ``samples`` already drawn) as
    ``samples/step_N.png`` and ``samples.png`` of the run folder; images (grey or RGB) as a
    grid, toys (at least 1000 points) as a scatter over test data."""
    s = grid_samples(model, cfg, device=device) if samples is None else samples
    n = s.shape[0]
    folder = Path(run_dir) / "samples"
    folder.mkdir(exist_ok=True)
    path = folder / f"step_{step:08d}.png"
    if cfg.data.is_image:
        plots.save_digit_grid(s.cpu(), path, nrow=10, title=None)
    else:
        plots.save_toy_scatter(s.cpu(), path, reference=test_data(cfg.data)[0][:n],
                               title=f"{cfg.dataset} step {step}")
    ckpt.atomic_write_bytes(Path(run_dir) / "samples.png", path.read_bytes())
    return path
