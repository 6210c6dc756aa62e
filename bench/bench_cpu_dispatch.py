"""CPU kernels at 1 and 2 threads, per ISA variant, on contiguous inputs and on column views,
against copy_ of the same bytes, the eager twin and torch.compile(twin), in one run; ends with
the issue-23 targets, each met or missed.

    python bench/bench_cpu_dispatch.py [--out FILE.md] [--benchmark-json FILE.json]
        [--rounds 7] [--inner 3] [--threads 1,2] [--capabilities avx512,default|all]
        [--ops forward,inverse,backward,nll,nll_backward] [--dtypes float32,bfloat16]
        [--shapes 4096x1024,256x256] [--no-compile]

Rows: (threads, kernels, shape, dtype, op).  "view" runs the fused op on column views
(``t[:, 512:1536]`` of a 4096x2048 buffer for 4096x1024; bench/op_suite.py column_views);
"view/fused" is its time over the contiguous run's.  All variants of a row run interleaved
(bench/timing.py), so ratios hold on a shared, noisy machine; absolute times do not.  Default
kernels: the ones the extension chose (``--capabilities all``: every supported level).  With
``--out`` the same timings go to pytest-benchmark JSON next to the table (``--benchmark-json``
picks another path); compare two runs with ``pytest-benchmark compare A.json B.json``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from op_suite import candidates, make_tensors, op_cases  # noqa: E402
from timing import (Measurement, emit_report, json_path_next_to, markdown_table,  # noqa: E402
                    time_interleaved_samples, write_benchmark_json)

import ntm_engine  # noqa: E402  (op_suite put the source checkout on sys.path)
from ntm_engine import ops  # noqa: E402
from ntm_engine.machine import cpu_name  # noqa: E402

OPS = {"forward": "affine_coupling", "inverse": "affine_coupling_inverse",
       "backward": "affine_coupling_backward", "nll": "gaussian_nll",
       "nll_backward": "gaussian_nll_backward"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
HEADER = ["threads", "kernels", "shape", "dtype", "op", "fused ms", "view ms", "eager ms",
          "compile ms", "copy_ ms", "ns/elem", "GB/s", "copy_/fused", "eager/fused",
          "compile/fused", "view/fused"]
# issue 23's targets, at 2 threads on the first shape with the first (chosen) kernels
SPEEDUP_2T, FORWARD_VS_COMPILE, FORWARD_VS_EAGER, VIEW_SLOWDOWN, BF16_PER_ELEM = 1.8, 1.5, 3.0, 1.1, 1.0


def lscpu_summary() -> str:
    """CPU model and the SIMD flags that matter here (from lscpu; '' where it is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return cpu_name()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    simd = [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))]
    return (f"{fields.get('Model name', cpu_name()).strip()}, {fields.get('CPU(s)', '?').strip()} "
            f"CPUs, L2 {fields.get('L2 cache', '?').strip()}, L3 {fields.get('L3 cache', '?').strip()}; "
            f"SIMD flags: {' '.join(simd)}")


def machine(load_start) -> str:
    return (f"{lscpu_summary()}\n\ntorch {torch.__version__}; build_info() = "
            f"{ntm_engine.build_info()}\n\nload average at start: "
            f"{' '.join(f'{v:.2f}' for v in load_start)}")


def measure(threads, capabilities, op_names, dtypes, shapes, rounds, inner, compile_twin):
    """Rows (columns HEADER) and every variant's per-round times (Measurement)."""
    cases = {c.name: c for c in op_cases()}
    rows, records = [], []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        torch._dynamo.reset()  # inductor bakes the thread count into the code it generates
        for (r, c) in shapes:
            for dt in dtypes:
                t = make_tensors(r, c, DTYPES[dt], "cpu")
                for op in op_names:
                    case = cases[OPS[op]]
                    base = {k: f for k, f in candidates(case, t, compile_twin, strided=True).items()
                            if f is not None}
                    fns = {k: base[k] for k in ("eager", "compile", "copy_") if k in base}
                    for cap in capabilities:  # every variant's fused calls, interleaved too
                        fns[f"fused@{cap}"] = _at(cap, base["fused"])
                        fns[f"view@{cap}"] = _at(cap, base["fused_view"])
                    with torch.no_grad():
                        samples = time_interleaved_samples(fns, "cpu", rounds, inner)
                    records += [Measurement(f"{op}[{k}-{dt}-{r}x{c}-{n_threads}t]",
                                            f"{op} {dt} {r}x{c} {n_threads}t",
                                            {"variant": k, "dtype": dt, "shape": f"{r}x{c}",
                                             "threads": n_threads}, v, inner,
                                            {"bytes": case.bytes_moved(t)})
                                for k, v in samples.items()]
                    timed = {k: statistics.median(v) for k, v in samples.items()}
                    comp = timed.get("compile")
                    for cap in capabilities:
                        fused, view = timed[f"fused@{cap}"], timed[f"view@{cap}"]
                        rows.append([n_threads, cap, f"{r}x{c}", dt, op, fused * 1e3, view * 1e3,
                                     timed["eager"] * 1e3, None if comp is None else comp * 1e3,
                                     timed["copy_"] * 1e3, fused * 1e9 / (r * c),
                                     case.bytes_moved(t) / fused / 1e9, timed["copy_"] / fused,
                                     timed["eager"] / fused,
                                     None if comp is None else comp / fused, view / fused])
                        print(f"# {rows[-1][:5]} fused {fused * 1e3:.3g} ms", file=sys.stderr,
                              flush=True)
                del t
    return rows, records


def _at(cap, fn):
    def call():
        ops.set_cpu_capability(cap)
        return fn()
    return call


def targets(rows, threads, cap, shape) -> str:
    """The targets of issue 23 over the rows of kernels ``cap`` at ``shape``: a table per
    target with the figure of every (op, dtype) and met/missed on the worst one."""
    col = {h: i for i, h in enumerate(HEADER)}
    at = {(row[col["threads"]], row[col["dtype"]], row[col["op"]]): row for row in rows
          if row[col["kernels"]] == cap and row[col["shape"]] == shape}
    lo, hi = min(threads), max(threads)
    lines = [f"## Targets ({cap} kernels, {shape}; figures are ratios of medians)", "",
             "| target | op | dtype | figure | met |", "|---|---|---|---|---|"]

    def check(name, op, dt, value, ok):
        if value is not None:
            lines.append(f"| {name} | {op} | {dt} | {value:.3g} | {'met' if ok(value) else 'MISSED'} |")

    for (n, dt, op), row in sorted(at.items()):
        if n == hi and (lo, dt, op) in at and lo != hi:
            check(f"{hi} threads >= {SPEEDUP_2T}x faster than {lo}", op, dt,
                  at[(lo, dt, op)][col["fused ms"]] / row[col["fused ms"]], lambda v: v >= SPEEDUP_2T)
        if n == hi and op == "forward":
            check(f"forward >= {FORWARD_VS_COMPILE}x torch.compile at {hi} threads", op, dt,
                  row[col["compile/fused"]], lambda v: v >= FORWARD_VS_COMPILE)
            check(f"forward >= {FORWARD_VS_EAGER}x eager at {hi} threads", op, dt,
                  row[col["eager/fused"]], lambda v: v >= FORWARD_VS_EAGER)
    for (n, dt, op), row in sorted(at.items()):
        check(f"column view within 10% of contiguous ({n} threads)", op, dt,
              row[col["view/fused"]], lambda v: v <= VIEW_SLOWDOWN)
    for (n, dt, op), row in sorted(at.items()):
        if dt == "bfloat16" and (n, "float32", op) in at:
            check(f"bf16 ns/elem <= f32 ns/elem ({n} threads)", op, "bf16/f32",
                  row[col["ns/elem"]] / at[(n, "float32", op)][col["ns/elem"]],
                  lambda v: v <= BF16_PER_ELEM)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", help="also write the report (markdown) to this file")
    parser.add_argument("--benchmark-json", metavar="PATH",
                        help="pytest-benchmark JSON of every timing (default with --out: next "
                             "to it, .json for .md)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--inner", type=int, default=3, help="calls per timed round")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--capabilities", default=None,
                        help="comma-separated levels, or 'all' (every supported level, best "
                             "first); default: the level the extension chose")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--shapes", default="4096x1024")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    load_start = os.getloadavg()
    info = ntm_engine.build_info()
    chosen = info["cpu_capability"]
    caps = (list(reversed(info["cpu_capabilities_supported"])) if args.capabilities == "all"
            else args.capabilities.split(",") if args.capabilities else [chosen])
    threads = [int(v) for v in args.threads.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    header = (f"# CPU kernels by threads, layout and dtype, {datetime.date.today()}\n\n"
              f"Machine: {machine(load_start)}\n")
    try:
        rows, records = measure(threads, caps, args.ops.split(","), args.dtypes.split(","),
                                shapes, args.rounds, args.inner, not args.no_compile)
    finally:
        ops.set_cpu_capability(chosen)
    load_end = os.getloadavg()
    text = (header + "\n" + markdown_table(HEADER, rows) + "\n\n"
            + targets(rows, threads, caps[0], f"{shapes[0][0]}x{shapes[0][1]}")
            + f"\n\nload average at end: {' '.join(f'{v:.2f}' for v in load_end)}\n")
    emit_report(text, args.out)
    json_path = args.benchmark_json or json_path_next_to(args.out)
    if json_path:
        write_benchmark_json(json_path, records, source="bench/bench_cpu_dispatch.py",
                             rounds=args.rounds, warmup=2)


if __name__ == "__main__":
    main()
