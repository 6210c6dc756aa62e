"""CPU microbenchmarks of the fused ops (pytest-benchmark), and a one-run ratio table.

    python -m pytest bench/bench_ops.py                 # pytest-benchmark timings
    python bench/bench_ops.py [--out FILE.md] [--benchmark-json FILE.json]
                                                        # interleaved table: GB/s and ratios

Sizes: 4096 x 1024 and 256 x 256 float32 (plus bfloat16 in the table).  The ops, their bytes
and the timed variants are defined once, in bench/op_suite.py.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from op_suite import (HEADER, benchmark_variant, machine_description, make_tensors,  # noqa: E402
                      op_cases, run_suite)
from timing import (emit_report, json_path_next_to, markdown_table,  # noqa: E402
                    write_benchmark_json)

SHAPES = [(4096, 1024), (256, 256)]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def tensors(request):
    return make_tensors(*request.param, torch.float32, "cpu")


@pytest.mark.parametrize("variant", ["fused", "eager", "compile", "copy_"])
@pytest.mark.parametrize("case", op_cases(), ids=lambda c: c.name)
def test_op(benchmark, tensors, case, variant):
    benchmark_variant(benchmark, case, tensors, variant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.add_argument("--benchmark-json", metavar="PATH",
                        help="write the timings as pytest-benchmark JSON (default with --out: "
                             "next to it, .json for .md)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    rows = run_suite(SHAPES, [torch.float32, torch.bfloat16], "cpu", rounds=args.rounds,
                     records=records)
    text = (f"# CPU op benchmark, {datetime.date.today()}\n\nMachine: {machine_description('cpu')}\n\n"
            "Medians of interleaved rounds in one process; ratios > 1 mean the fused op is faster "
            "(copy_/fused: fraction of copy_ bandwidth reached).\n\n" + markdown_table(HEADER, rows) + "\n")
    emit_report(text, args.out)
    json_path = args.benchmark_json or json_path_next_to(args.out)
    if json_path:
        write_benchmark_json(json_path, records, source="bench/bench_ops.py", rounds=args.rounds,
                             warmup=2)


if __name__ == "__main__":
    main()
