"""GPU run of bench/bench_reversible.py: reversible vs plain autograd vs per-layer checkpoint
(and memcnn when installed) on deep coupling stacks, 256 x 1024 float32.

    python bench/reversible_cuda.py [--out FILE]

Prints a short markdown table (step time; activation memory held between forward and backward
from ``torch.cuda.memory_allocated``; step peak from ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``).  Finishes in well under 90 s on an H200.  Exits 0 with a message
when no GPU is visible.  With --out, pytest-benchmark JSON of every step time next to the table.
Steps are timed between CUDA events without flushing the L2: one training step's weights and
activations (tens of MiB from depth 8 up) already exceed what the L2 would keep between steps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import benchmark_json  # noqa: E402
from gpu_timing import SampleTimer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--depths", default="8,16,32,64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: smoke test
    args, _ = parser.parse_known_args()  # tolerate arguments meant for other bench scripts
    if args.device == "cuda" and not torch.cuda.is_available():
        print("reversible_cuda: no CUDA device visible; nothing measured")
        return
    import bench_reversible as br

    timer = SampleTimer(flush_l2=False)
    # br.run times with br.time_steps; this timer keeps the samples for the JSON
    br.time_steps = lambda steps, device, rounds, warmup=1: timer(steps, device, rounds, 1, warmup)
    t0 = time.time()
    print(f"{'GPU' if args.device == 'cuda' else 'CPU'} {br.machine(args.device)}; input {br.BATCH} x {br.DIM} float32, conditioner "
          f"{br.DIM // 2}->{br.HIDDEN}->{br.DIM}; medians of {args.rounds} interleaved steps",
          flush=True)
    lines = br.table([]).splitlines()  # header rows
    print("\n".join(lines), flush=True)
    depths = [int(d) for d in args.depths.split(",")]
    for depth in depths:
        rows = br.run([depth], args.device, {depth: args.rounds}, log=lambda *a: None)
        new = br.table(rows).splitlines()[2:]
        print("\n".join(new), flush=True)
        lines += new
    print(f"({time.time() - t0:.0f} s)")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        entries = [benchmark_json.entry(f"reversible depth {depth}", "test_step",
                                        {"depth": str(depth), "method": method}, seconds, {})
                   for depth, per_method in zip(depths, timer.samples)
                   for method, seconds in per_method.items()]
        benchmark_json.write(os.path.splitext(args.out)[0] + ".json", entries, args.device)


if __name__ == "__main__":
    main()
