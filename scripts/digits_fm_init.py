"""Measure initialising an NTM from a flow-matching model on the digits (class-conditional,
default digits config, one thread): FM pretraining for N iterations, an NTM fine-tuned from
it for M iterations, and an NTM from scratch for the same M iterations and seed; test
bits/dim along the way and at the end, class accuracy and Frechet distance of 4-step samples,
and the FM model's own Euler sampler at 4 and 32 steps.

    python3 scripts/digits_fm_init.py [--fm-iters N] [--iters M] [--root runs/fm_init]

Writes the runs under ``--root`` (resumable: a finished run is kept), the figure
``docs/digits_fm_init_curves.png`` and the numbers ``docs/digits_fm_init.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ntm_engine import cli, plots  # noqa: E402
from ntm_engine.checkpoint import atomic_write_text  # noqa: E402
from ntm_engine.training import Trainer, evaluate_bpd, read_metrics  # noqa: E402

COMMON = ["--class-conditional", "--threads", "1", "--no-progress", "--resume"]
SAMPLE_KEYS = ("class_accuracy", "frechet_distance", "sample_ms_per_sample",
               "samples_nonfinite")


def run(*argv) -> None:
    code = cli.main([str(a) for a in argv])
    if code:
        raise SystemExit(f"`ntm {' '.join(map(str, argv))}` failed with status {code}")


def evaluate(run_dir: Path, steps: int, out: Path, n: int) -> dict:
    run("eval", run_dir, "--steps", steps, "--n-samples", n, "--threads", 1, "--out", out)
    return json.loads(out.read_text())


def curve(run_dir: Path, key: str):
    return [[r["step"], r[key]] for r in read_metrics(run_dir)
            if r.get("type") == "eval" and key in r]


def bpd_at_init(run_dir: Path, scratch: Path) -> float:
    """Test bits/dim (EMA = raw weights at step 0) of the model a run of ``run_dir``'s
    config starts from, built by the trainer in the folder ``scratch``."""
    cfg = json.loads((run_dir / "config.json").read_text())
    t = Trainer(cfg, scratch, device="cpu", progress=False, plots=False, log=lambda m: None)
    try:
        return evaluate_bpd(t.ema.model, cfg, "cpu")["bpd"]
    finally:
        t.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fm-iters", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--root", default=str(ROOT / "runs" / "fm_init"))
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    args = ap.parse_args()
    root, docs = Path(args.root), Path(args.docs)
    fm, init, scratch = root / "fm", root / "ntm_from_fm", root / "ntm_scratch"

    run("train", "--objective", "flow_matching", "--iters", args.fm_iters,
        "--eval-every", max(args.fm_iters // 4, 1), *COMMON, "--out", fm)
    run("train", "--init-from", fm, "--iters", args.iters, "--eval-every", args.eval_every,
        *COMMON, "--out", init)
    run("train", "--iters", args.iters, "--eval-every", args.eval_every, *COMMON,
        "--out", scratch)

    res = {"setup": {"data": "digits, class-conditional, default digits config (T = 4)",
                     "fm_iters": args.fm_iters, "ntm_iters": args.iters, "seed": 0,
                     "threads": 1, "fm_reg": 2.5, "n_samples": args.n_samples,
                     "bpd": "test split, t_0 = 0 bound, dequantised, 17 bins (EMA weights)",
                     "samples": "EMA weights, labels 0..9 cycled, temperature 1, no guidance"}}
    for name, path in (("ntm_from_fm", init), ("ntm_scratch", scratch)):
        ev = evaluate(path, 4, root / f"eval_{name}.json", args.n_samples)
        end = [r for r in read_metrics(path) if r.get("event") == "end"][-1]
        bpd0 = bpd_at_init(path, root / f"init_{name}")
        res[name] = {"test_bpd": ev["test_bpd"], "test_bpd_sem": ev["test_bpd_sem"],
                     "train_elapsed_s": end["elapsed_s"],
                     "samples_4_steps": {k: ev[k] for k in SAMPLE_KEYS},
                     "test_bpd_curve": [[0, bpd0]] + curve(path, "test_bpd")}
    res["fm"] = {"test_fm_loss_curve": curve(fm, "test_fm_loss"),
                 "train_elapsed_s": [r for r in read_metrics(fm)
                                     if r.get("event") == "end"][-1]["elapsed_s"]}
    for steps in (4, 32):
        ev = evaluate(fm, steps, root / f"eval_fm_{steps}.json", args.n_samples)
        res["fm"]["test_fm_loss"] = ev["test_fm_loss"]
        res["fm"][f"euler_{steps}_steps"] = {k: ev[k] for k in SAMPLE_KEYS}
    res["frechet_distance_train_vs_test"] = ev["frechet_distance_train_vs_test"]
    atomic_write_text(docs / "digits_fm_init.json", json.dumps(res, indent=1) + "\n")
    def with_init(name, path):   # the step-0 evaluation as a record of the curve
        return [{"type": "eval", "step": 0, "test_bpd": res[name]["test_bpd_curve"][0][1]}] + \
            read_metrics(path)

    plots.compare_runs({"FM pretraining": read_metrics(fm),
                        f"NTM from FM ({args.fm_iters} FM its)": with_init("ntm_from_fm", init),
                        "NTM from scratch": with_init("ntm_scratch", scratch)},
                       docs / "digits_fm_init_curves.png",
                       title="digits: NTM initialised from flow matching vs from scratch")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
