"""Figures: digit grids (Pillow, upscaled so a person can see them; latents through
:func:`latent_preview`), toy scatter plots and training curves (matplotlib, Agg backend)."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .checkpoint import atomic_write_bytes


def _save_png(img, path) -> Path:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def digit_grid_image(images: Tensor, nrow: int = 10, scale: int = 8, pad: int = 2,
                     labels: Optional[Sequence[Any]] = None):
    """A Pillow image of ``images [N, C, H, W]`` (C = 1 grey or 3 RGB; values in [-1, 1],
    clamped), ``nrow`` per row, each pixel upscaled to ``scale x scale`` (nearest), ``pad``
    grey pixels between."""
    x = images.detach().float().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got {list(images.shape)}")
    n, ch, h, w = x.shape
    nrow = max(1, min(nrow, n)) if n else 1
    ncol_rows = max(1, math.ceil(n / nrow))
    cell_h, cell_w = h * scale + pad, w * scale + pad
    canvas = torch.full((ncol_rows * cell_h + pad, nrow * cell_w + pad, ch), 128,
                        dtype=torch.uint8)
    pix = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    pix = pix.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = pad + r * cell_h, pad + c * cell_w
        canvas[top:top + h * scale, left:left + w * scale] = pix[i]
    if ch == 1:
        return Image.fromarray(canvas[..., 0].numpy(), mode="L")
    return Image.fromarray(canvas.numpy(), mode="RGB")


def save_digit_grid(images: Tensor, path, nrow: int = 10, scale: int = 8,
                    title: Optional[str] = None) -> Path:
    """Write a digit grid PNG (see :func:`digit_grid_image`); returns the path."""
    img = digit_grid_image(images, nrow=nrow, scale=scale)
    if title:
        framed = Image.new(img.mode, (img.width, img.height + 14), "white")
        framed.paste(img, (0, 14))
        ImageDraw.Draw(framed).text((2, 1), title, fill="black")
        img = framed
    return _save_png(img, path)


def latent_preview(z: Tensor, mean: Sequence[float], scale: Sequence[float],
                   spread: float = 3.0):
    """``(images [N, 3 or 1, H, W] in [-1, 1], what)``: a view of latents ``z [N, C, H, W]``
    without a decoder -- channels 0-2 as RGB (channel 0 as grey when ``C < 3``), each
    normalised by its ``mean``/``scale`` and shown over ``mean +- spread * scale``; ``what``
    says so in a few words (a grid's title)."""
    x = z.detach().float().cpu()
    k = 3 if x.shape[1] >= 3 else 1
    m = torch.tensor(list(mean)[:k]).view(1, k, 1, 1)
    s = torch.tensor(list(scale)[:k]).view(1, k, 1, 1)
    shown = "channels 0-2 as RGB" if k == 3 else "channel 0"
    return ((x[:, :k] - m) / (spread * s)).clamp(-1, 1), f"{shown}, mean +- {spread:g} std"


def figure(figsize):
    import matplotlib   # deferred on purpose: heavy, and only the curves and scatters need it
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=100)


def save_fig(fig, path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def save_toy_scatter(samples: Tensor, path, reference: Optional[Tensor] = None,
                     title: Optional[str] = None, lim: float = 3.0) -> Path:
    """Scatter plot of 2-D ``samples [N, 2]`` (and the ``reference`` data beside them)."""
    s = samples.detach().float().cpu()
    panels = [("samples", s)] + ([("data", reference.detach().float().cpu())]
                                 if reference is not None else [])
    fig = figure((4 * len(panels), 4))
    for i, (name, pts) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=1.5, alpha=0.5,
                   color="C0" if name == "samples" else "C1")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(f"{title} - {name}" if title else name, fontsize=9)
    return save_fig(fig, path)


def plot_metrics(records: List[Dict[str, Any]], path) -> Path:
    """Training loss, train bits/dim and test bits/dim against the step (nats/dim for a run
    on latents)."""
    train = [r for r in records if r.get("type") == "train"]
    nats = any("train_nats_per_dim" in r for r in train) or any(
        "test_nats_per_dim" in r for r in records)
    key, unit = ("nats_per_dim", "nats/dim") if nats else ("bpd", "bits/dim")
    evals = [r for r in records if r.get("type") == "eval" and f"test_{key}" in r]
    fig = figure((9, 3.5))
    ax1 = fig.add_subplot(1, 2, 1)
    if train:
        ax1.plot([r["step"] for r in train], [r["loss_per_dim"] for r in train], lw=1)
    ax1.set_xlabel("step")
    ax1.set_ylabel("trajectory NLL (nats/dim)")
    ax1.set_title("training loss", fontsize=9)
    ax2 = fig.add_subplot(1, 2, 2)
    train = [r for r in train if f"train_{key}" in r]
    if train:
        ax2.plot([r["step"] for r in train], [r[f"train_{key}"] for r in train], lw=1,
                 label="train batch")
    if evals:
        ax2.plot([r["step"] for r in evals], [r[f"test_{key}"] for r in evals], "o-", ms=3,
                 label="test (EMA)")
    fm = [r for r in records if r.get("type") == "eval" and "test_fm_loss" in r]
    if fm:   # a flow-matching run: its test loss instead
        ax2.plot([r["step"] for r in fm], [r["test_fm_loss"] for r in fm], "o-", ms=3,
                 label="test (EMA)")
    ax2.set_xlabel("step")
    ax2.set_ylabel("flow-matching loss" if fm else f"{unit} (t0 = 0 bound)")
    ax2.legend(fontsize=8)
    ax2.set_title("test flow-matching loss" if fm else unit, fontsize=9)
    return save_fig(fig, path)


def compare_runs(runs: Dict[str, List[Dict[str, Any]]], path, title: Optional[str] = None
                 ) -> Path:
    """Curves of several runs' ``metrics.jsonl`` records (``{label: records}``) against the
    step: train-batch and test bits/dim of NTM runs; the test loss of flow-matching runs and
    the ``|mu - mu_FM|^2`` regulariser of runs started from one, when there are any."""
    def series(recs, kind, key):
        pts = [(r["step"], r["fm_reg"] * r["fm_reg_weight"] if key == "weighted_fm_reg"
                else r[key]) for r in recs if r.get("type") == kind
               and (("fm_reg" in r and "fm_reg_weight" in r) if key == "weighted_fm_reg"
                    else key in r)]
        return [p[0] for p in pts], [p[1] for p in pts]

    panels = [("bits/dim (t0 = 0 bound)", "bits/dim: train batch (thin), test EMA (dots)",
               [("train", "train_bpd", "-"), ("eval", "test_bpd", "o-")]),
              ("flow-matching loss", "flow-matching pretraining: test loss",
               [("eval", "test_fm_loss", "o-")]),
              ("|mu - mu_FM|^2", "regulariser (thin), weight x regulariser (dashed)",
               [("train", "fm_reg", "-"), ("train", "weighted_fm_reg", "--")])]
    panels = [p for p in panels if any(series(recs, kind, key)[0] for recs in runs.values()
                                       for kind, key, _ in p[2])]
    fig = figure((4.5 * max(len(panels), 1), 3.6))
    for i, (ylabel, name, curves) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for j, (label, recs) in enumerate(runs.items()):
            for kind, key, style in curves:
                xs, ys = series(recs, kind, key)
                if xs:
                    ax.plot(xs, ys, style, color=f"C{j}", ms=3, lw=1 if style == "-" else 1.5,
                            alpha=0.5 if style == "-" and len(curves) > 1 else 1.0, label=label)
                    label = None   # one legend entry per run
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_fig(fig, path)


def save_histograms(groups: Dict[str, Tensor], path, *, xlabel: str,
                    title: Optional[str] = None, bins: int = 50) -> Path:
    """Overlaid histograms (densities) of one value per item for each named group, on shared
    bins (e.g. per-image bits/dim of held-out and of corrupted images)."""
    values = {k: v.detach().double().cpu() for k, v in groups.items() if len(v)}
    fig = figure((6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    if values:
        allv = torch.cat(list(values.values()))
        lo, hi = float(allv.min()), float(allv.max())
        edges = torch.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1).numpy()
        for name, v in values.items():
            ax.hist(v.numpy(), bins=edges, density=True, alpha=0.5, label=f"{name} (n={len(v)})")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if title:
        ax.set_title(title, fontsize=9)
    return save_fig(fig, path)
