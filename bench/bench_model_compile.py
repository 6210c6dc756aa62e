"""The NTM training step, eager vs ``torch.compile`` (CPU).

    python bench/bench_model_compile.py [--kinds coupling autoregressive] [--batch 128]
                                        [--threads 2] [--rounds 5] [--out FILE]

Model: :meth:`NTM.for_digits <ntm_engine.models.NTM.for_digits>` (class-conditional, 8x8,
T = 4, predictor width 128 / depth 4, 4 transporter layers of 128 units, reversible), in
training mode, float32.  A step: ``zero_grad(set_to_none=True)``, ``trajectory_nll(x, y).mean()``
(the random draws of the trajectory and of label dropout included), ``backward()``; no
optimizer update.  ``compiled``: ``torch.compile(model.trajectory_nll, fullgraph=True)``
(inductor, default mode); its first call (tracing + code generation) is reported as the compile
time.  Timings: interleaved medians (:func:`timing.time_interleaved`).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from typing import Callable, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, when not pip-installed
sys.path.insert(0, HERE)

import torch  # noqa: E402

from ntm_engine.models import NTM  # noqa: E402
from timing import emit_report, markdown_table, time_interleaved  # noqa: E402

KINDS = ("coupling", "autoregressive")


def make_step(model: NTM, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> Callable:
    def step():
        model.zero_grad(set_to_none=True)
        loss_fn(x, y).mean().backward()
    return step


def run_kind(kind: str, batch: int, rounds: int) -> List[object]:
    torch.manual_seed(0)
    model = NTM.for_digits(transporter=kind).train()
    x = torch.rand(batch, 1, 8, 8) * 2 - 1
    y = torch.randint(10, (batch,))
    compiled = torch.compile(model.trajectory_nll, fullgraph=True)
    eager_step = make_step(model, model.trajectory_nll, x, y)
    compiled_step = make_step(model, compiled, x, y)
    t0 = time.perf_counter()
    compiled_step()
    compile_s = time.perf_counter() - t0
    times = time_interleaved({"eager": eager_step, "compiled": compiled_step}, rounds=rounds,
                             inner=2, warmup=1)
    row = [kind, batch, 1e3 * times["eager"], 1e3 * times["compiled"],
           times["eager"] / times["compiled"], compile_s]
    print(row, flush=True)
    return row


def machine() -> str:
    return (f"2-core AMD EPYC, AVX2 (shared), {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = [run_kind(kind, args.batch, args.rounds) for kind in args.kinds]
    text = (f"# NTM training step, eager vs torch.compile (cpu)\n\nDate: "
            f"{datetime.date.today()}; machine: {machine()}; total {time.time() - t0:.0f} s.\n"
            f"Digits NTM (width 128, depth 4, T = 4, 4 reversible transporter layers), "
            f"forward + backward, float32.\n\n"
            + markdown_table(["transporter", "batch", "eager ms", "compiled ms",
                              "speed-up", "compile s"], rows) + "\n")
    emit_report(text, args.out)


if __name__ == "__main__":
    main()
