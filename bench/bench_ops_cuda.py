"""GPU benchmark of the five fused ntm ops against their eager twins, torch.compile(twin) and a
device-to-device copy_ of the same bytes (DESIGN.md section 6).

    python bench/bench_ops_cuda.py [--out FILE] [--rounds 7] [--no-compile]   # the table
    python -m pytest bench/bench_ops_cuda.py                                    # pytest-benchmark

Problem: 65536 x 1024 = 2^26 elements, float32 and bfloat16.  Bytes moved per op (n elements
of e bytes, B rows, per-sample values in float32): forward/inverse read 3 and write 1 tensor,
the fused backward reads 4 and writes 4, gaussian_nll reads 3, gaussian_nll_backward reads 3
and writes 3; plus the per-sample reads/writes (4 B bytes).  The copy_ baseline copies between
two preallocated buffers of half those bytes each, so it moves exactly the op's bytes
(read + write): "copy_/fused" is the fraction of copy bandwidth the op reaches.

Times are medians over interleaved rounds in one process (CUDA events around `inner` calls,
after a warm-up), so the ratios are robust to clock drift.  Skipped without a GPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from a source checkout that is not installed
    sys.path.insert(0, ROOT)

sys.path.insert(0, os.path.join(ROOT, "bench"))
import timing  # noqa: E402
from ntm_engine import ops  # noqa: E402
from ntm_engine import reference as R  # noqa: E402

ROWS, COLS = 65536, 1024
DTYPES = (torch.float32, torch.bfloat16)
CLAMP = 2.0


@dataclass
class Case:
    name: str
    tensors_read: int
    tensors_written: int
    per_sample: int  # per-sample (float32) vectors read or written
    fused: Callable
    twin: Callable


CASES = [
    Case("affine_coupling", 3, 1, 1,
         lambda t: ops.affine_coupling(t["x"], t["b"], t["l"], CLAMP),
         lambda t: R.affine_coupling(t["x"], t["b"], t["l"], CLAMP)),
    Case("affine_coupling_inverse", 3, 1, 1,
         lambda t: ops.affine_coupling_inverse(t["x"], t["b"], t["l"], CLAMP),
         lambda t: R.affine_coupling_inverse(t["x"], t["b"], t["l"], CLAMP)),
    Case("affine_coupling_backward", 4, 4, 1,
         lambda t: ops.affine_coupling_backward(t["x"], t["b"], t["l"], t["g"], t["gb"], CLAMP),
         lambda t: R.affine_coupling_backward(t["x"], t["b"], t["l"], t["g"], t["gb"], CLAMP)),
    Case("gaussian_nll", 3, 0, 1,
         lambda t: ops.gaussian_nll(t["x"], t["b"], t["l"]),
         lambda t: R.gaussian_nll(t["x"], t["b"], t["l"])),
    Case("gaussian_nll_backward", 3, 3, 1,
         lambda t: ops.gaussian_nll_backward(t["x"], t["b"], t["l"], t["gb"]),
         lambda t: R.gaussian_nll_backward(t["x"], t["b"], t["l"], t["gb"])),
]


def make_tensors(dtype: torch.dtype, rows: int = ROWS, cols: int = COLS,
                 device: str = "cuda") -> Dict[str, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(scale=1.0):
        return (scale * torch.randn(rows, cols, device=device, generator=g)).to(dtype)

    return {"x": rnd(), "b": rnd(), "l": rnd(0.5), "g": rnd(),
            "gb": torch.randn(rows, device=device, generator=g)}


def bytes_moved(case: Case, t: Dict[str, torch.Tensor]) -> int:
    x = t["x"]
    return ((case.tensors_read + case.tensors_written) * x.numel() * x.element_size()
            + case.per_sample * x.shape[0] * 4)


def variants(case: Case, t, compile_twin: bool) -> Dict[str, Optional[Callable[[], object]]]:
    """The timed candidates; 'compile' is None when disabled or when compilation failed."""
    nbytes = bytes_moved(case, t)
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=t["x"].device).random_()
    dst = torch.empty_like(src)
    compiled = None
    if compile_twin:
        try:
            fn = torch.compile(case.twin, dynamic=False)
            with torch.no_grad():
                fn(t)  # compile outside the timed region
            compiled = lambda: fn(t)  # noqa: E731
        except Exception as err:  # a broken compiler must not hide the other numbers
            print(f"# torch.compile failed for {case.name}: {type(err).__name__}: {err}",
                  file=sys.stderr)
    return {"fused": lambda: case.fused(t), "eager": lambda: case.twin(t),
            "compile": compiled, "copy_": lambda: dst.copy_(src)}


def time_interleaved(fns: Dict[str, Callable[[], object]], rounds: int = 7, inner: int = 10,
                     warmup: int = 3, device: str = "cuda") -> Dict[str, float]:
    """Median seconds per call of each candidate (bench/timing.py), without autograd."""
    with torch.no_grad():
        return timing.time_interleaved(fns, device, rounds=rounds, inner=inner, warmup=warmup)


def fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def run_table(rounds: int, compile_twin: bool, cases: List[Case] = CASES, rows_: int = ROWS,
              device: str = "cuda", emit: Callable[[List[object]], None] = lambda row: None,
              ) -> List[List[object]]:
    """Measures every (dtype, op); `emit` receives each row as soon as it is measured."""
    rows = []
    for dtype in DTYPES:
        t = make_tensors(dtype, rows_, COLS, device)
        for case in cases:
            t0 = time.perf_counter()
            cands = variants(case, t, compile_twin)
            timed = time_interleaved({k: f for k, f in cands.items() if f is not None}, rounds,
                                     device=device)
            nbytes = bytes_moved(case, t)
            fused, copy = timed["fused"], timed["copy_"]
            comp = timed.get("compile")
            row = [case.name, str(dtype).replace("torch.", ""), fused * 1e3, nbytes / fused / 1e9,
                   copy / fused, timed["eager"] * 1e3, None if comp is None else comp * 1e3,
                   timed["eager"] / fused, None if comp is None else comp / fused,
                   copy * 1e3, nbytes / copy / 1e9]
            rows.append(row)
            emit(row)
            print(f"# {case.name} {row[1]}: fused {fmt(row[2])} ms, {fmt(row[3])} GB/s "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        del t
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def markdown_header() -> str:
    return "| " + " | ".join(HEADER) + " |\n" + "|" + "---|" * len(HEADER)


def markdown_row(row: List[object]) -> str:
    return "| " + " | ".join(fmt(v) for v in row) + " |"


def markdown(rows: List[List[object]]) -> str:
    return "\n".join([markdown_header()] + [markdown_row(r) for r in rows])


# ----------------------------------------------------------------------------- pytest-benchmark

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module", params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def tensors(request):
    t = make_tensors(request.param)
    yield t
    del t
    torch.cuda.empty_cache()


@pytest.mark.parametrize("variant", ["fused", "eager", "compile", "copy_"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_op_cuda(benchmark, tensors, case, variant):
    fn = variants(case, tensors, compile_twin=variant == "compile")[variant]
    if fn is None:
        pytest.skip("torch.compile failed")
    benchmark.extra_info["bytes"] = bytes_moved(case, tensors)

    def call():
        fn()
        torch.cuda.synchronize()

    with torch.no_grad():
        benchmark.pedantic(call, rounds=20, iterations=1, warmup_rounds=3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(twin)")
    parser.add_argument("--rows", type=int, default=ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: smoke test
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_ops_cuda: no CUDA GPU, nothing to measure")
        return 0
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    title = (f"GPU op benchmark: {where}, torch {torch.__version__}, "
             f"{args.rows}x{COLS} elements; ratios > 1 mean the fused op is faster "
             "(copy_/fused: fraction of copy_ bandwidth reached).\n")
    # The table is printed row by row, so a run cut short by a time limit still reports.
    print(title + "\n" + markdown_header(), flush=True)
    rows = run_table(args.rounds, not args.no_compile, rows_=args.rows, device=args.device,
                     emit=lambda row: print(markdown_row(row), flush=True))
    text = title + "\n" + markdown(rows)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
