"""GPU benchmark of the five fused ntm ops against their eager twins, torch.compile(twin) and a
device-to-device copy_ of the same bytes (docs/design.md, section 6).

    python bench/bench_ops_cuda.py [--out FILE.md] [--rounds 7] [--no-compile]  # the table
    python -m pytest bench/bench_ops_cuda.py                                      # pytest-benchmark

Problems: 65536 x 1024 = 2^26 elements (many short rows), 64 x 12288 (few rows: the long-row
path must split rows to fill the GPU) and 8 x 2^20 (very long rows); float32 and bfloat16.
The ops, their bytes and the timed variants are defined once, in bench/op_suite.py.  The script
times on a cold L2 (bench/gpu_timing.py: twice the L2 overwritten before each call, every call
between its own CUDA events), medians over interleaved rounds in one process, so the ratios are
robust to clock drift; with --out it writes pytest-benchmark JSON next to the table (FILE.json,
or --benchmark-json PATH), which `pytest-benchmark compare A.json B.json` diffs.  The pytest
suite (op_suite.benchmark_variant) times warm calls.  Skipped without a GPU.
"""
from __future__ import annotations

import argparse
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_json  # noqa: E402
import timing  # noqa: E402
from gpu_timing import SampleTimer  # noqa: E402
from op_suite import HEADER, benchmark_variant, make_tensors, op_cases, run_suite  # noqa: E402
from timing import markdown_header, markdown_row  # noqa: E402

ROWS, COLS = 65536, 1024
SHAPES = ((ROWS, COLS), (64, 12288), (8, 2**20))
DTYPES = (torch.float32, torch.bfloat16)

# ----------------------------------------------------------------------------- pytest-benchmark

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module", params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def tensors(request):
    t = make_tensors(ROWS, COLS, request.param, "cuda")
    yield t
    del t
    torch.cuda.empty_cache()


@pytest.mark.parametrize("variant", ["fused", "eager", "compile", "copy_"])
@pytest.mark.parametrize("case", op_cases(), ids=lambda c: c.name)
def test_op_cuda(benchmark, tensors, case, variant):
    benchmark_variant(benchmark, case, tensors, variant)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", help="also write the table (markdown) to this file, and the "
                        "pytest-benchmark JSON next to it")
    parser.add_argument("--benchmark-json", help="the JSON's path (default: --out's, .json)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--inner", type=int, default=10, help="calls per timed round")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(twin)")
    parser.add_argument("--rows", type=int, default=None,
                        help="only the shape rows x 1024 (default: every shape of SHAPES)")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: smoke test
    args, _ = parser.parse_known_args()  # tolerate arguments meant for other bench scripts
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_ops_cuda: no CUDA GPU, nothing to measure")
        return 0
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    shapes = [(args.rows, COLS)] if args.rows else list(SHAPES)
    title = (f"GPU op benchmark: {where}, torch {torch.__version__}, shapes "
             f"{', '.join(f'{r}x{c}' for r, c in shapes)}; ratios > 1 mean the fused op is "
             "faster (copy_/fused: fraction of copy_ bandwidth reached).\n")
    # The table is printed row by row, so a run cut short by a time limit still reports.
    print(title + "\n" + markdown_header(HEADER), flush=True)
    timer = SampleTimer(flush_l2=True)
    timing.time_interleaved = timer  # run_suite times with timing.time_interleaved
    rows = run_suite(shapes, DTYPES, args.device, rounds=args.rounds,
                     inner=args.inner, compile_twin=not args.no_compile,
                     emit=lambda row: print(markdown_row(row), flush=True))
    if args.out:
        with open(args.out, "w") as f:
            f.write(title + "\n" + "\n".join([markdown_header(HEADER)]
                                             + [markdown_row(r) for r in rows]) + "\n")
    json_path = args.benchmark_json or (os.path.splitext(args.out)[0] + ".json" if args.out
                                        else None)
    if json_path:
        benchmark_json.write(json_path, _json_entries(rows, timer.samples), args.device)
    return 0


def _json_entries(rows, samples):
    """One pytest-benchmark entry per (row of the table, timed variant)."""
    entries = []
    for row, per_variant in zip(rows, samples):
        shape, dtype, op, fused_ms, gbps = row[:5]
        params = {"op": op, "shape": shape, "dtype": dtype}
        for variant, seconds in per_variant.items():
            entries.append(benchmark_json.entry(
                f"{op} {shape} {dtype}", "test_op_cuda", dict(params, variant=variant), seconds,
                {"bytes": round(gbps * 1e9 * fused_ms / 1e3), "l2": "flushed before each call"}))
    return entries


if __name__ == "__main__":
    sys.exit(main())
