"""Condition tokens against class labels on the digits (issue 25, item 1).

The token model is conditioned on a fixed random token sequence per class (8 tokens of 32
values, seed 2026; the label itself is not given to it), the label model on the label; both
are the default digits model with the same options and budget.  Each is sampled the way
``ntm eval`` samples a conditional run (:func:`ntm_engine.training.sample_conditions`: sample
``i`` shows class ``i % 10``, with that class's label or token sequence), 1000 samples per
noise seed, and rated by the digits classifier (accuracy against the class, Frechet distance of
its features to the test split), over 5 noise seeds, at guidance 0 and each ``--guidance``.

    python bench/digits_condition_tokens.py tokens OUT.npz      # the token file only
    python bench/digits_condition_tokens.py train DIR [--iters 1500] [--threads 1] [--seed 0]
        # DIR/tokens.npz, then DIR/label and DIR/tokens trained concurrently (ntm train)
    python bench/digits_condition_tokens.py evaluate DIR [DIR ...] [--out tables.md] \\
        [--guidance 1 2]          # one DIR per training seed (train --seed S)
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the source checkout

from ntm_engine import load_run, metrics  # noqa: E402
from ntm_engine.data import digits_data, load_digits  # noqa: E402
from ntm_engine.training import evaluate_bpd, sample_conditions  # noqa: E402

TOKENS, FEATURES, SEED = 8, 32, 2026
SEEDS = (0, 1, 2, 3, 4)


def class_tokens(seed: int = SEED) -> np.ndarray:
    """The fixed token sequence of each class: ``[10, 8, 32]`` float32, standard normal."""
    return np.random.default_rng(seed).standard_normal((10, TOKENS, FEATURES)).astype(np.float32)


def write_tokens(path: Path) -> Path:
    """The token file of the built-in digits (``ntm train --dataset digits --cond FILE``):
    ``cond`` ``[N_train, 8, 32]`` and ``test_cond`` ``[N_test, 8, 32]``, each item's class
    sequence, in the splits' item order."""
    data, table = digits_data(), class_tokens()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, cond=table[data.train.labels.numpy()], test_cond=table[data.test.labels.numpy()])
    return path


def train_commands(out: Path, iters: int, threads: int, seed: int = 0):
    common = ["--dataset", "digits", "--iters", str(iters), "--threads", str(threads),
              "--seed", str(seed), "--no-progress", "--resume"]
    py = [sys.executable, "-m", "ntm_engine", "train"]
    return {"label": py + common + ["--class-conditional", "--out", str(out / "label")],
            "tokens": py + common + ["--cond", str(out / "tokens.npz"),
                                     "--out", str(out / "tokens")]}


def train(args) -> int:
    out = Path(args.dir)
    write_tokens(out / "tokens.npz")
    cmds = train_commands(out, args.iters, args.threads, args.seed)
    procs = {}
    for name, cmd in cmds.items():
        print("$ " + " ".join(cmd), flush=True)
        log = open(out / f"train_{name}.log", "w")
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=Path(__file__).resolve().parent.parent)
    codes = {name: p.wait() for name, p in procs.items()}
    print(codes)
    return max(codes.values())


def mean_sem(v):
    v = torch.tensor(v, dtype=torch.float64)
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


@torch.no_grad()
def rate(run_dir: Path, guidances, n: int, net, xt):
    r = load_run(run_dir)
    y, classes = sample_conditions(r.config.data, n)
    out = {"step": r.step, "train_elapsed_s": r.checkpoint.state.get("elapsed_s"),
           "test_bpd": evaluate_bpd(r.model, r.config, "cpu", seed=0)["bpd"]}
    for w in guidances:
        acc, fd = [], []
        for seed in SEEDS:
            s = r.model.sample(n, y=y, guidance=w, generator=torch.Generator().manual_seed(seed))
            q = metrics.sample_quality(net, s, classes, xt)
            acc.append(q["class_accuracy"])
            fd.append(q["frechet_distance"])
        out[str(w)] = {"accuracy": mean_sem(acc), "fd": mean_sem(fd), "per_seed_accuracy": acc,
                       "per_seed_fd": fd}
    return out


def evaluate(args) -> int:
    torch.set_num_threads(args.threads)
    net, meta = metrics.load_or_train_classifier()
    xt, _ = load_digits("test")
    guidances = (0.0, *args.guidance)
    results = {}
    for d in map(Path, args.dirs):
        t0 = time.perf_counter()
        res = {name: rate(d / name, guidances, args.n, net, xt) for name in ("label", "tokens")}
        res["eval_s"] = time.perf_counter() - t0
        (d / "results.json").write_text(json.dumps(res, indent=1) + "\n")
        results[str(d)] = res
    text = report(results, guidances, args.n, meta)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def within(a, b):
    """Whether the token figure ``a = (mean, sem)`` lies within one standard error of the label
    figure ``b`` (the larger of the two errors)."""
    return abs(a[0] - b[0]) <= max(a[1], b[1])


def report(results, guidances, n, meta) -> str:
    """Markdown tables: per training run, the figures of both models at each guidance; then
    the differences tokens - label (s.e. of the difference: the two s.e. in quadrature) and
    whether the token figure lies within one s.e. of the label figure."""
    out = [f"{n} samples per noise seed, noise seeds {list(SEEDS)}, mean +- s.e. over the "
           f"noise seeds; classifier test accuracy {float(meta.get('test_accuracy', 'nan')):.4f}.",
           "", "| training seed run | model | guidance | class accuracy | Frechet distance "
           "| test bits/dim |", "|---|---|---|---|---|---|"]
    for d, res in results.items():
        for w in guidances:
            for name in ("label", "tokens"):
                r = res[name][str(w)]
                out.append(f"| {Path(d).name} | {name} | {w:g} | {r['accuracy'][0]:.4f} +- "
                           f"{r['accuracy'][1]:.4f} | {r['fd'][0]:.2f} +- {r['fd'][1]:.2f} | "
                           f"{res[name]['test_bpd']:.4f} |")
    out += ["", "| training seed run | guidance | accuracy: tokens - label | within 1 s.e. "
            "| Frechet distance: tokens - label | within 1 s.e. |", "|---|---|---|---|---|---|"]
    for d, res in results.items():
        for w in guidances:
            a, b = res["tokens"][str(w)], res["label"][str(w)]
            cells = []
            for k, fmt in (("accuracy", ".4f"), ("fd", ".2f")):
                diff = a[k][0] - b[k][0]
                se = math.hypot(a[k][1], b[k][1])
                cells += [f"{diff:+{fmt}} +- {se:{fmt}}", "yes" if within(a[k], b[k]) else "no"]
            out.append(f"| {Path(d).name} | {w:g} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokens")
    t.add_argument("out")
    tr = sub.add_parser("train")
    tr.add_argument("dir")
    tr.add_argument("--iters", type=int, default=1500)
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--seed", type=int, default=0, help="the training seed of both runs")
    ev = sub.add_parser("evaluate")
    ev.add_argument("dirs", nargs="+", help="folders of train (one per training seed)")
    ev.add_argument("--n", type=int, default=1000)
    ev.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0],
                    help="guidance weights besides 0")
    ev.add_argument("--threads", type=int, default=1)
    ev.add_argument("--out", default=None, help="a markdown table")
    args = p.parse_args(argv)
    if args.cmd == "tokens":
        print(write_tokens(Path(args.out)))
        return 0
    return train(args) if args.cmd == "train" else evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
