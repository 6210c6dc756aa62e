"""CPU kernels at 1 and 2 threads, per ISA variant, on contiguous inputs and on column views,
against copy_ of the same bytes, the eager twin and torch.compile(twin), in one run.

    python bench/bench_cpu_dispatch.py [--out FILE] [--rounds 5] [--no-compile]
        [--inner 3] [--threads 1,2] [--capabilities avx2,default] [--ops forward,inverse,backward]

Rows: (threads, capability, shape, dtype, op); shapes 4096 x 1024 and 256 x 256, float32 and
bfloat16.  "view/fused" is the time on column views over the time on contiguous tensors (the
target is <= 1.1); "bf16 ns/elem" lets the dtypes be compared per element.  All variants of a
row run interleaved (bench/timing.py), so ratios hold on a shared, noisy machine; absolute
times do not.  The torch.compile and eager columns do not depend on the capability and are
measured once per (threads, shape, dtype, op).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from op_suite import candidates, make_tensors, op_cases  # noqa: E402
from timing import emit_report, markdown_table, time_interleaved  # noqa: E402

import ntm_engine  # noqa: E402  (op_suite put the source checkout on sys.path)
from ntm_engine import ops  # noqa: E402
from ntm_engine.machine import cpu_name  # noqa: E402

SHAPES = [(4096, 1024), (256, 256)]
DTYPES = [torch.float32, torch.bfloat16]
OPS = {"forward": "affine_coupling", "inverse": "affine_coupling_inverse",
       "backward": "affine_coupling_backward"}
HEADER = ["threads", "kernels", "shape", "dtype", "op", "fused ms", "ns/elem", "GB/s",
          "copy_/fused", "eager/fused", "compile/fused", "view/fused"]


def machine() -> str:
    info = ntm_engine.build_info()
    return (f"{cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; ntm kernels "
            f"compiled {info['cpu_capabilities_compiled']}, supported here "
            f"{info['cpu_capabilities_supported']}; load average at start "
            f"{os.getloadavg()[0]:.1f}")


def measure(threads, capabilities, op_names, rounds, inner, compile_twin):
    cases = {c.name: c for c in op_cases()}
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for (r, c) in SHAPES:
            for dtype in DTYPES:
                t = make_tensors(r, c, dtype, "cpu")
                for op in op_names:
                    case = cases[OPS[op]]
                    base = {k: f for k, f in candidates(case, t, compile_twin, strided=True).items()
                            if f is not None}
                    fns = {k: base[k] for k in ("eager", "compile", "copy_") if k in base}
                    for cap in capabilities:  # every variant's fused calls, interleaved too
                        fns[f"fused@{cap}"] = _at(cap, base["fused"])
                        fns[f"view@{cap}"] = _at(cap, base["fused_view"])
                    with torch.no_grad():
                        timed = time_interleaved(fns, "cpu", rounds, inner)
                    for cap in capabilities:
                        fused = timed[f"fused@{cap}"]
                        comp = timed.get("compile")
                        rows.append([n_threads, cap, f"{r}x{c}", str(dtype).replace("torch.", ""),
                                     op, fused * 1e3, fused * 1e9 / (r * c),
                                     case.bytes_moved(t) / fused / 1e9, timed["copy_"] / fused,
                                     timed["eager"] / fused,
                                     None if comp is None else comp / fused,
                                     timed[f"view@{cap}"] / fused])
                        print(f"# {rows[-1][:5]} fused {fused * 1e3:.3g} ms", file=sys.stderr,
                              flush=True)
                del t
    return rows


def _at(cap, fn):
    def call():
        ops.set_cpu_capability(cap)
        return fn()
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", help="also write the report (markdown) to this file")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inner", type=int, default=3, help="calls per timed round")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--capabilities", default=None,
                        help="default: every level this CPU supports, best first")
    parser.add_argument("--ops", default="forward,inverse,backward")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    chosen = ntm_engine.build_info()["cpu_capability"]
    caps = (args.capabilities.split(",") if args.capabilities
            else list(reversed(ntm_engine.build_info()["cpu_capabilities_supported"])))
    header = f"# CPU kernels by ISA and threads, {datetime.date.today()}\n\nMachine: {machine()}\n"
    try:
        rows = measure([int(v) for v in args.threads.split(",")], caps, args.ops.split(","),
                       args.rounds, args.inner, not args.no_compile)
    finally:
        ops.set_cpu_capability(chosen)
    emit_report(header + "\n" + markdown_table(HEADER, rows) + "\n", args.out)


if __name__ == "__main__":
    main()
