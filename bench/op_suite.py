"""The op benchmark suite: fused op vs eager twin vs torch.compile(twin) vs copy_ of the bytes.

The one list of benchmarked ops, used by bench/bench_ops.py (CPU) and bench/bench_ops_cuda.py
(GPU), both as pytest-benchmark suites and as scripts that print one interleaved table.

Bytes moved per op (n elements of e bytes, B rows, per-sample values in float32 or float64):
forward/inverse read 3 and write 1 tensor, the fused backward reads 4 and writes 3 (x, grad_x,
grad_scale_logits; grad_shift is grad_y itself),
gaussian_nll reads 3, gaussian_nll_backward reads 3 and writes 3; each op also reads or writes
one per-sample vector.  The copy_ baseline copies between two preallocated buffers of half
those bytes each, so it moves exactly the op's bytes (read + write): "copy_/fused" is the
fraction of copy_ bandwidth the op reaches.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run as a script from a source checkout that is not installed
    sys.path.insert(0, _ROOT)

from ntm_engine import ops  # noqa: E402
from ntm_engine import reference as R  # noqa: E402

CLAMP = 2.0
Tensors = Dict[str, torch.Tensor]


@dataclass
class OpCase:
    name: str
    tensors_read: int
    tensors_written: int
    fused: Callable[[Tensors], object]
    twin: Callable[[Tensors], object]

    def bytes_moved(self, t: Tensors) -> int:
        x, per_sample = t["x"], t["gb"]
        return ((self.tensors_read + self.tensors_written) * x.numel() * x.element_size()
                + per_sample.numel() * per_sample.element_size())


def op_cases() -> List[OpCase]:
    """The five ops; tensors: x (input), b (shift / mean), l (scale logits / log-sigma),
    g (upstream gradient), gb (per-sample upstream gradient)."""
    return [
        OpCase("affine_coupling", 3, 1,
               lambda t: ops.affine_coupling(t["x"], t["b"], t["l"], CLAMP),
               lambda t: R.affine_coupling(t["x"], t["b"], t["l"], CLAMP)),
        OpCase("affine_coupling_inverse", 3, 1,
               lambda t: ops.affine_coupling_inverse(t["x"], t["b"], t["l"], CLAMP),
               lambda t: R.affine_coupling_inverse(t["x"], t["b"], t["l"], CLAMP)),
        OpCase("affine_coupling_backward", 4, 3,
               lambda t: ops.affine_coupling_backward(t["x"], t["b"], t["l"], t["g"], t["gb"],
                                                      CLAMP),
               lambda t: R.affine_coupling_backward(t["x"], t["b"], t["l"], t["g"], t["gb"],
                                                    CLAMP)),
        OpCase("gaussian_nll", 3, 0,
               lambda t: ops.gaussian_nll(t["x"], t["b"], t["l"]),
               lambda t: R.gaussian_nll(t["x"], t["b"], t["l"])),
        OpCase("gaussian_nll_backward", 3, 3,
               lambda t: ops.gaussian_nll_backward(t["x"], t["b"], t["l"], t["gb"]),
               lambda t: R.gaussian_nll_backward(t["x"], t["b"], t["l"], t["gb"])),
    ]


def make_tensors(rows: int, cols: int, dtype: torch.dtype, device: str) -> Tensors:
    """Seeded inputs ``[rows, cols]`` of ``dtype`` (per-sample ``gb [rows]`` in the
    accumulation dtype), drawn on ``device``."""
    g = torch.Generator(device=device).manual_seed(0)
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(rows, cols, device=device, generator=g)).to(dtype)

    return {"x": rnd(), "b": rnd(), "l": rnd(0.5), "g": rnd(),
            "gb": torch.randn(rows, device=device, generator=g, dtype=acc)}


def column_views(t: Tensors, pad: Optional[int] = None) -> Tensors:
    """The same values as ``t``, each ``[rows, cols]`` tensor now a column slice of a wider
    buffer (inner dimension contiguous, row stride > cols): what a coupling layer passes for
    the two halves of its input.  Default: ``buf[:, cols/2 : cols/2 + cols]`` of a
    ``[rows, 2 cols]`` buffer (4096x1024 -> ``t[:, 512:1536]`` of 4096x2048); with ``pad``,
    ``buf[:, pad/2 : pad/2 + cols]`` of ``[rows, cols + pad]``."""
    def widen(v: torch.Tensor) -> torch.Tensor:
        if v.dim() != 2:
            return v
        extra = v.shape[1] if pad is None else pad
        buf = torch.empty(v.shape[0], v.shape[1] + extra, dtype=v.dtype, device=v.device)
        return buf[:, extra // 2: extra // 2 + v.shape[1]].copy_(v)

    return {k: widen(v) for k, v in t.items()}


def candidates(case: OpCase, t: Tensors, compile_twin: bool = True, strided: bool = False
               ) -> Dict[str, Optional[Callable[[], object]]]:
    """The timed variants of one op on one input set: fused, eager, compile, copy_, and with
    ``strided`` "fused_view" (the fused op on :func:`column_views` of the inputs); 'compile' is
    None when disabled or when compilation failed (a broken compiler must not hide the other
    numbers)."""
    device = t["x"].device
    src = torch.empty(case.bytes_moved(t) // 2, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    compiled = None
    if compile_twin:
        try:
            fn = torch.compile(case.twin, dynamic=False)
            with torch.no_grad():
                fn(t)  # compile outside the timed region
            compiled = lambda: fn(t)  # noqa: E731
        except Exception as err:
            print(f"# torch.compile failed for {case.name}: {type(err).__name__}: {err}",
                  file=sys.stderr)
    out = {"fused": lambda: case.fused(t), "eager": lambda: case.twin(t),
           "compile": compiled, "copy_": lambda: dst.copy_(src)}
    if strided:
        views = column_views(t)
        out["fused_view"] = lambda: case.fused(views)
    return out


def benchmark_variant(benchmark, case: OpCase, t: Tensors, variant: str) -> None:
    """The pytest-benchmark body shared by the CPU and GPU suites: time one variant of one op
    (no autograd; on CUDA every call is synchronised, 20 rounds after 3 warm-ups)."""
    import pytest

    fn = candidates(case, t, compile_twin=variant == "compile")[variant]
    if fn is None:
        pytest.skip("torch.compile failed")
    benchmark.extra_info["bytes"] = case.bytes_moved(t)
    with torch.no_grad():
        if t["x"].is_cuda:
            def call():
                fn()
                torch.cuda.synchronize()

            benchmark.pedantic(call, rounds=20, iterations=1, warmup_rounds=3)
        else:
            benchmark(fn)


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (f"{platform.processor() or platform.machine()} x{os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


HEADER = ["shape", "dtype", "op", "fused ms", "fused GB/s", "copy_/fused", "eager/fused",
          "compile/fused", "eager ms", "compile ms", "copy_ ms"]


def run_suite(shapes: Sequence[Tuple[int, int]], dtypes: Sequence[torch.dtype], device: str,
              rounds: int = 7, inner: int = 3, compile_twin: bool = True,
              emit: Callable[[List[object]], None] = lambda row: None,
              records: Optional[list] = None) -> List[List[object]]:
    """One row (columns :data:`HEADER`) per (shape, dtype, op): times (ms), GB/s and the
    ratios of one interleaved run (no autograd).  ``emit`` receives each row as soon as it is
    measured, so a run cut short by a time limit still reports what it measured.  ``records``,
    if given, receives every variant's per-round times as a ``timing.Measurement`` (for
    ``timing.write_benchmark_json``)."""
    import statistics

    from timing import Measurement, time_interleaved_samples

    rows = []
    for (r, c) in shapes:
        for dtype in dtypes:
            t = make_tensors(r, c, dtype, device)
            for case in op_cases():
                t0 = time.perf_counter()
                cands = {k: f for k, f in candidates(case, t, compile_twin).items()
                         if f is not None}
                with torch.no_grad():
                    samples = time_interleaved_samples(cands, device, rounds, inner)
                timed = {k: statistics.median(v) for k, v in samples.items()}
                if records is not None:
                    dt = str(dtype).replace("torch.", "")
                    records.extend(
                        Measurement(f"{case.name}[{k}-{dt}-{r}x{c}]", f"{case.name} {dt} {r}x{c}",
                                    {"variant": k, "dtype": dt, "shape": f"{r}x{c}",
                                     "threads": torch.get_num_threads()},
                                    v, inner, {"bytes": case.bytes_moved(t)})
                        for k, v in samples.items())
                fused, copy, comp = timed["fused"], timed["copy_"], timed.get("compile")
                row = [f"{r}x{c}", str(dtype).replace("torch.", ""), case.name,
                       fused * 1e3, case.bytes_moved(t) / fused / 1e9, copy / fused,
                       timed["eager"] / fused, None if comp is None else comp / fused,
                       timed["eager"] * 1e3, None if comp is None else comp * 1e3, copy * 1e3]
                rows.append(row)
                emit(row)
                print(f"# {case.name} {row[1]} {row[0]}: fused {fused * 1e3:.3g} ms "
                      f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
            del t
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows
