"""How much the importance-weighted bits/dim owe to where the dequantisation noise is drawn:
the test split's bound over ``K`` trajectories with the noise fixed once per image (a bound on
``log p(x + u)``, below the discrete likelihood by the noise's Jensen gap whatever ``K``)
against the noise drawn afresh with each trajectory (what ``ntm eval --bpd-samples K`` and
``ntm score`` report; it tends to the discrete bits/dim as ``K`` grows).

    python bench/iw_dequantisation.py RUN [--k 1,16,256] [--steps T] [--n N] [--out PREFIX]
                                      # prints a table; writes PREFIX.{md,json} with --out
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the source checkout

from table_report import finish  # noqa: E402

from ntm_engine import metrics  # noqa: E402
from ntm_engine.training import load_run  # noqa: E402
from ntm_engine.training.batches import run_data  # noqa: E402


@torch.no_grad()
def bounds(run: str, ks, steps=None, n=None, batch_size: int = 512, seed: int = 0) -> dict:
    """``{"K": {"fixed": bpd, "per_trajectory": bpd, ...}, ...}``: mean test bits/dim (the
    conditional bound for a class-conditional run) with either placement of the noise."""
    r = load_run(run)
    cfg, model = r.config, r.model.eval()
    images = run_data(cfg.data)
    if cfg.objective.objective != "ntm" or images is None or not images.bins:
        raise SystemExit(f"iw_dequantisation: {run} is not an NTM run on quantised images")
    x, y = images.tensors("test")
    x, y = x[:n], (y[:n] if cfg.data.class_conditional else None)
    device = next(model.parameters()).device
    out = {"run": str(run), "n": len(x), "steps": steps or model.steps, "bins": images.bins,
           "K": {}}
    for k in ks:
        t0 = time.time()
        fixed = metrics.dataset_mean(   # the noise drawn once per image, before the model
            lambda xb, yb, g: model.bits_per_dim(xb, yb, bins=images.bins, generator=g,
                                                 samples=k, steps=steps),
            x, y, images.bins, batch_size, seed, device=device)
        t1 = time.time()
        joint = metrics.dataset_bits_per_dim(model, x, y, images.bins, batch_size, seed,
                                             device, samples=k, steps=steps)   # as `ntm eval`
        row = {"fixed": fixed["mean"], "fixed_sem": fixed["sem"], "fixed_s": t1 - t0,
               "per_trajectory": joint["bpd"], "per_trajectory_sem": joint["bpd_sem"],
               "per_trajectory_s": time.time() - t1}
        out["K"][str(k)] = row
        print(f"K={k}: fixed {row['fixed']:.4f}, per trajectory {row['per_trajectory']:.4f}",
              file=sys.stderr, flush=True)
    return out


def markdown(res: dict) -> str:
    lines = ["| K | noise fixed per image | noise per trajectory | difference |",
             "| --- | --- | --- | --- |"]
    for k, row in res["K"].items():
        lines.append(f"| {k} | {row['fixed']:.4f} +- {row['fixed_sem']:.4f} | "
                     f"{row['per_trajectory']:.4f} +- {row['per_trajectory_sem']:.4f} | "
                     f"{row['fixed'] - row['per_trajectory']:+.4f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="iw_dequantisation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="an NTM run folder (or checkpoint) on quantised images")
    p.add_argument("--k", default="1,16,256", help="trajectories per image, comma-separated")
    p.add_argument("--steps", type=int, default=None, help="the grid's T (default: the model's)")
    p.add_argument("--n", type=int, default=None, help="at most N test images (default all)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="write PREFIX.md and PREFIX.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ks = [int(k) for k in args.k.split(",")]
    except ValueError:
        p.error(f"--k: comma-separated integers expected, got {args.k!r}")
    if any(k < 1 for k in ks):
        p.error(f"--k: every K must be >= 1, got {args.k!r}")
    res = bounds(args.run, ks, args.steps, args.n)
    return finish(res, markdown(res), args.out)


if __name__ == "__main__":
    sys.exit(main())
