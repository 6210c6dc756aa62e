"""The files of a sampler comparison: ``quality_vs_steps.md`` (a table),
``quality_vs_steps.png`` (Frechet distance against NFE and against ms per sample, one line per
sampler, log axes) and ``quality_vs_steps.json`` (every row)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..checkpoint import atomic_write_text
from ..plots import figure, save_fig

__all__ = ["write_report", "markdown_table", "plot_quality", "quality_keys"]

STEM = "quality_vs_steps"
# (row key, column header, format); quality columns a row lacks are left out
COLUMNS = (("sampler", "sampler", "{}"), ("model", "model", "{}"), ("steps", "steps", "{}"),
           ("nfe", "NFE", "{}"), ("ms_per_sample", "ms / sample", "{:.3f}"),
           ("frechet_distance", "Frechet distance", "{:.2f}"),
           ("frechet_distance_raw", "Frechet distance (raw)", "{:.4f}"),
           ("frechet_distance_train", "Frechet distance (raw, to train)", "{:.4f}"),
           ("class_accuracy", "class accuracy", "{:.3f}"),
           ("samples_nonfinite", "non-finite", "{}"))


# the y-axis label of each Frechet distance: which features it compares
AXIS_LABELS = {"frechet_distance": "Frechet distance, digits-classifier features",
               "frechet_distance_raw": "Frechet distance, raw values (pixels)",
               "frechet_distance_train": "Frechet distance, raw values, to training examples"}


def quality_keys(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The Frechet distances every row carries (features first, then raw values), at least
    one (ValueError otherwise)."""
    keys = [k for k in AXIS_LABELS if rows and all(k in r for r in rows)]
    if not keys:
        raise ValueError("rows must all carry 'frechet_distance' or 'frechet_distance_raw'")
    return keys


def _cell(r: Dict[str, Any], key: str, fmt: str) -> str:
    if key not in r:
        return ""
    if f"{key}_sem" in r:   # several noise seeds: mean +- standard error
        return f"{fmt.format(r[key])} +- {fmt.format(r[f'{key}_sem'])}"
    return fmt.format(r[key])


def markdown_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A Markdown table of ``rows``, sorted by sampler then steps; a figure measured at
    several noise seeds reads ``mean +- standard error``."""
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["sampler"], r["steps"])):
        lines.append("| " + " | ".join(_cell(r, k, fmt) for k, _, fmt in cols) + " |")
    return "\n".join(lines) + "\n"


def plot_quality(rows: Sequence[Dict[str, Any]], path, title: str = "",
                 references: Optional[Dict[str, float]] = None) -> Path:
    """Frechet distance against NFE (left) and against ms per sample (right), log-log, one
    line per sampler (error bars: the standard error over noise seeds), one row of panels
    per distance the rows carry (:func:`quality_keys`); ``references`` (distance -> what
    real data scores) as dashed lines."""
    keys = quality_keys(rows)
    fig = figure((11, 4.2 * len(keys)))
    axes = fig.subplots(len(keys), 2, squeeze=False)
    by_sampler: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        by_sampler.setdefault(r["sampler"], []).append(r)
    for key, row_axes in zip(keys, axes):
        for name, rs in sorted(by_sampler.items()):
            rs = sorted(rs, key=lambda r: r["nfe"])
            style = dict(marker="*" if name.startswith("ntm") else "o",
                         markersize=11 if name.startswith("ntm") else 5, label=name, capsize=2)
            y = [max(r[key], 1e-6) for r in rs]
            err = [r.get(f"{key}_sem", 0.0) for r in rs]
            for ax, xkey in zip(row_axes, ("nfe", "ms_per_sample")):
                ax.errorbar([r[xkey] for r in rs], y, yerr=err, **style)
        for ax, xlabel in zip(row_axes, ("function evaluations (NFE)", "ms per sample")):
            if references and key in references:
                ax.axhline(references[key], color="grey", linestyle="--",
                           label="real data (held out)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.grid(True, which="both", alpha=0.3)
        row_axes[0].set_ylabel(f"{AXIS_LABELS[key]}\n(lower: better)")
    axes[0][0].legend(fontsize=8)
    fig.subplots_adjust(wspace=0.15, hspace=0.3)
    if title:
        fig.suptitle(title)
    return save_fig(fig, path)


def write_report(rows: Sequence[Dict[str, Any]], out_dir, *, title: str,
                 meta: Optional[Dict[str, Any]] = None) -> Dict[str, Path]:
    """Write ``quality_vs_steps.{md,png,json}`` into ``out_dir`` (created); ``meta`` (e.g.
    the machine, the runs compared) heads the Markdown and goes into the JSON; its
    ``reference_frechet_distance`` (of the first distance the rows carry) and
    ``reference_frechet_distance_raw``, if any, are drawn as lines."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    head = [f"# {title}", ""] + [f"- {k}: {v}" for k, v in meta.items()] + [""]
    paths = {"md": out_dir / f"{STEM}.md", "png": out_dir / f"{STEM}.png",
             "json": out_dir / f"{STEM}.json"}
    atomic_write_text(paths["md"], "\n".join(head) + "\n" + markdown_table(rows))
    atomic_write_text(paths["json"], json.dumps({"meta": meta, "rows": list(rows)}, indent=1)
                      + "\n")
    keys = quality_keys(rows)
    refs = {k: meta[f"reference_{k}"] for k in keys if f"reference_{k}" in meta}
    if "reference_frechet_distance" in meta:
        refs.setdefault(keys[0], meta["reference_frechet_distance"])
    plot_quality(rows, paths["png"], title, refs)
    return paths
