"""Measure the self-distilled denoiser on the digits teacher (one thread): distil it
(``ntm distill``, resumable), then compare, on the same noise, 1000 samples with labels 0-9 of
(a) the plain 4-step sampler at ``t_0 = 0``, (b) 4 steps at ``t_0 = t_d`` with the transporter
inverse, (c) 4 steps at ``t_0 = t_d`` with the denoiser (``ntm eval --denoiser``): class
accuracy, Frechet distance (noise seeds 0, 1 and 2), ms/sample (also best of 3 timed runs); sizes and FLOPs of the
denoiser and the teacher; the held-out regression MSE of the distillation.

    python3 scripts/digits_distill.py [--teacher runs/digits] [--out runs/digits_distill]
                                      [--minutes 6] [--iters 1000]

Writes ``docs/digits_distill_eval.json`` and ``docs/digits_distilled_samples.png`` (rows 1-3:
(a), 4-6: (b), 7-9: (c); same noise and labels in each block).  The teacher folder is only
read.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from ntm_engine import cli, load_run, plots  # noqa: E402
from ntm_engine.checkpoint import atomic_write_text  # noqa: E402
from ntm_engine.training import load_denoiser, read_metrics  # noqa: E402

SAMPLE_KEYS = ("class_accuracy", "frechet_distance", "sample_ms_per_sample",
               "samples_nonfinite", "mean_max_softmax")


def flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def best_ms(fn, n: int, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=str(ROOT / "runs" / "digits"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "digits_distill"))
    ap.add_argument("--minutes", default="6")
    ap.add_argument("--iters", default="1000")
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    assert cli.main(["distill", args.teacher, "--out", str(out), "--minutes", args.minutes,
                     "--iters", args.iters, "--threads", "1", "--no-progress", "--resume"]) == 0
    evs = []
    for seed in (0, 1, 2):   # seed 0 gives the main numbers; 1, 2 show the spread
        ev_path = out / f"eval_with_teacher_seed{seed}.json"
        assert cli.main(["eval", args.teacher, "--denoiser", str(out), "--n-samples",
                         str(args.n), "--seed", str(seed), "--threads", "1",
                         "--out", str(ev_path)]) == 0
        evs.append(json.loads(ev_path.read_text()))
    ev = evs[0]

    loaded = load_run(args.teacher, "cpu")
    teacher, teacher_ck = loaded.model, loaded.checkpoint
    den, den_ck = load_denoiser(out, "cpu")
    t_d = float(den_ck.config["t_min"])
    n = args.n
    y = torch.arange(n) % 10
    samplers = {"a_plain_t0_0": {},
                "b_transporter_t0_t_d": {"t_min": t_d},
                "c_denoiser_t0_t_d": {"t_min": t_d, "denoiser": den}}
    best = {k: best_ms(lambda kw=kw: teacher.sample(n, y=y, generator=torch.Generator()
                                                    .manual_seed(0), **kw), n)
            for k, kw in samplers.items()}
    one = torch.zeros(1, 1, 8, 8)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    sizes = {
        "teacher_parameters": count(teacher),
        "teacher_transporter_parameters": count(teacher.transporter),
        "denoiser_parameters": count(den),
        "denoiser_parameter_fraction": count(den) / count(teacher),
        "teacher_sample_flops_per_sample": flops(
            lambda: teacher.sample(10, y=torch.arange(10), generator=torch.Generator())) / 10,
        "transporter_inverse_flops_per_sample": flops(
            lambda: teacher.transporter.inverse(one.reshape(1, 64), torch.full((1,), t_d),
                                                torch.zeros(1, dtype=torch.long))),
        "denoiser_flops_per_sample": flops(lambda: den(one, t_d, torch.zeros(1,
                                                                         dtype=torch.long))),
    }
    sizes["denoiser_flop_fraction_of_sample"] = (sizes["denoiser_flops_per_sample"]
                                                 / sizes["teacher_sample_flops_per_sample"])
    recs = read_metrics(out)
    last_eval = [r for r in recs if r.get("type") == "eval"][-1]
    end = [r for r in recs if r.get("event") == "end"][-1]
    res = {
        "teacher": {"checkpoint": str(teacher_ck.path), "step": teacher_ck.step,
                    "test_bpd": ev["test_bpd"]},
        "denoiser": {"checkpoint": str(den_ck.path), "step": den_ck.step, "t_d": t_d,
                     "config": den_ck.config["denoiser"],
                     "updates_per_batch": den_ck.config["updates_per_batch"],
                     "batch_size": den_ck.config["batch_size"],
                     "distill_elapsed_s": end.get("elapsed_s"), "threads": 1},
        "sizes": sizes,
        "regression_test_mse": {k: v for k, v in last_eval.items() if k.startswith("test_")},
        "regression_note": "per element, on the digits test split (dequantised, fixed noise): "
                           "test_mse = denoiser (EMA) vs the teacher's posterior means; "
                           "test_mse_transporter = the transporter inverse x_{t_0} (no "
                           "denoising) vs them; *_data = vs the clean images",
        "samplers": {
            "a_plain_t0_0": {k: ev[k] for k in SAMPLE_KEYS},
            "b_transporter_t0_t_d": {k: ev["transporter_at_t_d"][k] for k in SAMPLE_KEYS},
            "c_denoiser_t0_t_d": {k: ev["denoised"][k] for k in SAMPLE_KEYS},
        },
        "frechet_distance_train_vs_test": ev["frechet_distance_train_vs_test"],
        "n_samples": n, "labels": "0-9 cycled", "steps": 4, "seed": 0,
        "timing_note": "ms/sample: one timed batch of n in `ntm eval` (after a warm-up); "
                       "best_of_3_ms_per_sample: the best of 3 batches of n; 1 thread, on 2 "
                       "cores shared with other work",
    }
    for k, v in best.items():
        res["samplers"][k]["best_of_3_ms_per_sample"] = v
    for k, sub in (("a_plain_t0_0", None), ("b_transporter_t0_t_d", "transporter_at_t_d"),
                   ("c_denoiser_t0_t_d", "denoised")):
        for key in ("class_accuracy", "frechet_distance"):
            res["samplers"][k][f"{key}_seeds_0_1_2"] = [(e if sub is None else e[sub])[key]
                                                        for e in evs]
    docs = ROOT / "docs"
    atomic_write_text(docs / "digits_distill_eval.json", json.dumps(res, indent=1) + "\n")
    grid_y = torch.arange(30) % 10
    grids = [teacher.sample(30, y=grid_y, generator=torch.Generator().manual_seed(1), **kw)
             for kw in samplers.values()]
    plots.save_digit_grid(torch.cat(grids), docs / "digits_distilled_samples.png", nrow=10,
                          title=f"rows 1-3: t0=0 | 4-6: t0={t_d} | 7-9: t0={t_d} + denoiser")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
