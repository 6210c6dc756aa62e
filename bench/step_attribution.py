"""Where a few-step sample loses its quality: the Frechet distance of an NTM run's samples when
only its last ``keep`` reverse steps are drawn by the model, the levels above them taken from
real training images' own forward trajectories (:meth:`NTM.resample`).

    python bench/step_attribution.py RUN [--seeds 3] [--n 2000] [--out PREFIX]
                                      # prints a table; writes PREFIX.{md,json} with --out

``keep = 1``: only the last conditional flow ``p(x_{t_0} | x_{t_1}, ...)`` is the model's;
``keep = T``: the whole sample is (the plain sampler, with the training images' labels, as many
of each class). The
gap between consecutive columns is what those steps cost. Digits are judged by the ``ntm eval``
classifier's features, other images by their raw values, both against the test split; the
first column is the training images themselves (the floor). Runs with condition tokens are
not supported.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the source checkout

from table_report import finish  # noqa: E402

from ntm_engine.compare.quality import digits_quality  # noqa: E402
from ntm_engine.data import dequantize  # noqa: E402
from ntm_engine.training import load_run, raw_quality  # noqa: E402
from ntm_engine.training.batches import run_data  # noqa: E402


def judge(cfg):
    """``fd(images [n, ...]) -> float`` against the test split."""
    if cfg.data.dataset == "digits":
        quality, _ = digits_quality(None)
        return lambda s: quality(s)["frechet_distance"]
    quality = raw_quality(cfg.data)
    return lambda s: quality(s)["frechet_distance_raw"]


def balanced(x, y, n: int):
    """At most ``n`` of the images ``x``, the same number of each class of ``y`` (None: the
    first ``n``): the classifier's Frechet distance moves with the class shares (on the digits,
    labels drawn at random from the training split cost 0.5 against exactly equal shares)."""
    if y is None:
        return x[:n], None
    classes = y.unique()
    per = min(int((y == k).sum()) for k in classes)
    per = min(per, max(n // len(classes), 1))
    idx = torch.cat([(y == k).nonzero().view(-1)[:per] for k in classes])
    idx = idx.sort().values
    return x[idx], y[idx]


def attribution(run: str, seeds: int, n: int) -> dict:
    r = load_run(run)
    cfg, model = r.config, r.model.eval()
    if cfg.objective.objective != "ntm":
        raise SystemExit(f"step_attribution: {run} is a {cfg.objective.objective} run, not an NTM")
    if cfg.data.cond is not None:
        raise SystemExit("step_attribution: runs with condition tokens are not supported")
    images = run_data(cfg.data)
    if images is None:
        raise SystemExit(f"step_attribution: {run} trains on {cfg.data.dataset}, not images")
    x, y = images.tensors("train")
    x, y = balanced(x, y if cfg.data.class_conditional else None, n)
    fd = judge(cfg)
    out = {"run": str(run), "seeds": seeds, "n": len(x), "real_train_images": fd(x),
           "steps": {}}
    for T in getattr(model, "trained_steps", (model.steps,)):
        row = {}
        for keep in range(1, T + 1):
            vals = []
            for seed in range(seeds):
                g = torch.Generator().manual_seed(seed)
                xd = dequantize(x, images.bins, generator=g) if images.bins else x
                xd = xd.to(next(model.parameters()).dtype)
                vals.append(fd(model.resample(xd, y, T, keep=keep, generator=g)))
            row[str(keep)] = statistics.mean(vals)
            print(f"T={T} keep={keep}: {row[str(keep)]:.3f}", file=sys.stderr, flush=True)
        out["steps"][str(T)] = row
    return out


def markdown(res: dict) -> str:
    top = max(int(T) for T in res["steps"])
    head = ["T", "real (train split)"] + [f"last {k} step{'s' * (k > 1)} sampled"
                                          for k in range(1, top + 1)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for T, row in res["steps"].items():
        cells = [T, f"{res['real_train_images']:.3f}"]
        cells += [f"{row[str(k)]:.3f}" if str(k) in row else "" for k in range(1, top + 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="step_attribution", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="an NTM run folder (or checkpoint)")
    p.add_argument("--seeds", type=int, default=3, help="noise seeds averaged (default 3)")
    p.add_argument("--n", type=int, default=2000, help="training images used (default 2000)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="write PREFIX.md and PREFIX.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = attribution(args.run, args.seeds, args.n)
    return finish(res, markdown(res), args.out)


if __name__ == "__main__":
    sys.exit(main())
