"""The files of a sampler comparison: ``quality_vs_steps.md`` (a table),
``quality_vs_steps.png`` (Frechet distance against NFE and against ms per sample, one line per
sampler, log axes) and ``quality_vs_steps.json`` (every row)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..checkpoint import atomic_write_text
from ..plots import figure, save_fig

__all__ = ["write_report", "markdown_table", "plot_quality", "quality_key"]

STEM = "quality_vs_steps"
# (row key, column header, format); quality columns a row lacks are left out
COLUMNS = (("sampler", "sampler", "{}"), ("model", "model", "{}"), ("steps", "steps", "{}"),
           ("nfe", "NFE", "{}"), ("ms_per_sample", "ms / sample", "{:.3f}"),
           ("frechet_distance", "Frechet distance", "{:.2f}"),
           ("frechet_distance_raw", "Frechet distance (raw)", "{:.4f}"),
           ("class_accuracy", "class accuracy", "{:.3f}"),
           ("samples_nonfinite", "non-finite", "{}"))


# the y-axis label of each Frechet distance: which features it compares
AXIS_LABELS = {"frechet_distance": "Frechet distance, digits-classifier features",
               "frechet_distance_raw": "Frechet distance, raw values (pixels)"}


def quality_key(rows: Sequence[Dict[str, Any]]) -> str:
    """The Frechet distance the rows carry: features (digits) or raw values (toys)."""
    for k in ("frechet_distance", "frechet_distance_raw"):
        if rows and all(k in r for r in rows):
            return k
    raise ValueError("rows must all carry 'frechet_distance' or 'frechet_distance_raw'")


def markdown_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A Markdown table of ``rows``, sorted by sampler then steps."""
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["sampler"], r["steps"])):
        lines.append("| " + " | ".join(fmt.format(r[k]) if k in r else "" for k, _, fmt in cols)
                     + " |")
    return "\n".join(lines) + "\n"


def plot_quality(rows: Sequence[Dict[str, Any]], path, title: str = "",
                 reference: Optional[float] = None) -> Path:
    """Two panels, Frechet distance against NFE and against ms per sample (log-log), one
    line per sampler; ``reference`` (e.g. real training data's distance) as a dashed line."""
    key = quality_key(rows)
    fig = figure((11, 4.2))
    axes = fig.subplots(1, 2)
    by_sampler: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        by_sampler.setdefault(r["sampler"], []).append(r)
    for name, rs in sorted(by_sampler.items()):
        rs = sorted(rs, key=lambda r: r["nfe"])
        style = dict(marker="*" if name.startswith("ntm") else "o",
                     markersize=11 if name.startswith("ntm") else 5, label=name)
        for ax, xkey in zip(axes, ("nfe", "ms_per_sample")):
            ax.plot([r[xkey] for r in rs], [max(r[key], 1e-6) for r in rs], **style)
    for ax, xlabel in zip(axes, ("function evaluations (NFE)", "ms per sample")):
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", label="real data (held out)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"{AXIS_LABELS[key]} (lower: better)")
    axes[0].legend(fontsize=8)
    fig.subplots_adjust(wspace=0.15)
    if title:
        fig.suptitle(title)
    return save_fig(fig, path)


def write_report(rows: Sequence[Dict[str, Any]], out_dir, *, title: str,
                 meta: Optional[Dict[str, Any]] = None) -> Dict[str, Path]:
    """Write ``quality_vs_steps.{md,png,json}`` into ``out_dir`` (created); ``meta`` (e.g.
    the machine, the runs compared) heads the Markdown and goes into the JSON; its
    ``reference_frechet_distance``, if any, is drawn as a line."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    head = [f"# {title}", ""] + [f"- {k}: {v}" for k, v in meta.items()] + [""]
    paths = {"md": out_dir / f"{STEM}.md", "png": out_dir / f"{STEM}.png",
             "json": out_dir / f"{STEM}.json"}
    atomic_write_text(paths["md"], "\n".join(head) + "\n" + markdown_table(rows))
    atomic_write_text(paths["json"], json.dumps({"meta": meta, "rows": list(rows)}, indent=1)
                      + "\n")
    plot_quality(rows, paths["png"], title, meta.get("reference_frechet_distance"))
    return paths
