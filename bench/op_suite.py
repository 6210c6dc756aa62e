"""The op benchmark suite: fused op vs eager twin vs torch.compile(twin) vs copy_ of the bytes.

Used by bench/bench_ops.py (CPU, pytest-benchmark and script) and the GPU scripts.
Bytes moved per op (n elements of e bytes): forward/inverse read 3 and write 1 tensor (4 n e),
the fused backward reads 4 and writes 4 (8 n e), gaussian_nll reads 3 (3 n e).  The copy_
baseline copies a preallocated buffer of half those bytes, so it moves the same bytes.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch

from ntm_engine import ops
from ntm_engine import reference as R

CLAMP = 2.0


@dataclass
class OpCase:
    name: str
    tensors_moved: int
    fused: Callable
    twin: Callable


def op_cases() -> List[OpCase]:
    return [
        OpCase("forward", 4, lambda t: ops.affine_coupling(t[0], t[1], t[2], CLAMP),
               lambda t: R.affine_coupling(t[0], t[1], t[2], CLAMP)),
        OpCase("inverse", 4, lambda t: ops.affine_coupling_inverse(t[0], t[1], t[2], CLAMP),
               lambda t: R.affine_coupling_inverse(t[0], t[1], t[2], CLAMP)),
        OpCase("fused_backward", 8,
               lambda t: ops.affine_coupling_backward(t[0], t[1], t[2], t[3], t[4], CLAMP),
               lambda t: R.affine_coupling_backward(t[0], t[1], t[2], t[3], t[4], CLAMP)),
        OpCase("gaussian_nll", 3, lambda t: ops.gaussian_nll(t[0], t[1], t[2]),
               lambda t: R.gaussian_nll(t[0], t[1], t[2])),
    ]


def make_tensors(rows: int, cols: int, dtype: torch.dtype, device: str) -> Tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cpu").manual_seed(0)
    make = lambda: torch.randn(rows, cols, generator=g).to(dtype=dtype, device=device)  # noqa: E731
    return (make(), make(), 0.5 * make(), make(), torch.randn(rows, generator=g).to(device))


def candidates(case: OpCase, tensors, device: str) -> Dict[str, Callable[[], object]]:
    """The four timed variants of one op on one input set."""
    x = tensors[0]
    nbytes = case.tensors_moved * x.numel() * x.element_size()
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    compiled = torch.compile(case.twin, dynamic=False)
    with torch.no_grad():
        compiled(tensors)  # compile outside the timed region
    return {
        "fused": lambda: case.fused(tensors),
        "eager": lambda: case.twin(tensors),
        "compile": lambda: compiled(tensors),
        "copy_": lambda: dst.copy_(src),
    }


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    import os

    return (f"{platform.processor() or platform.machine()} x{os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


def run_suite(shapes, dtypes, device: str, rounds: int = 7, inner: int = 3) -> List[List[object]]:
    """One table row per (shape, dtype, op): times (ms), GB/s and the ratios of one run."""
    from timing import time_interleaved

    rows = []
    for (r, c) in shapes:
        for dtype in dtypes:
            tensors = make_tensors(r, c, dtype, device)
            for case in op_cases():
                t = time_interleaved(candidates(case, tensors, device), device, rounds, inner)
                nbytes = case.tensors_moved * r * c * tensors[0].element_size()
                rows.append([
                    f"{r}x{c}", str(dtype).replace("torch.", ""), case.name,
                    t["fused"] * 1e3, t["eager"] * 1e3, t["compile"] * 1e3, t["copy_"] * 1e3,
                    nbytes / t["fused"] / 1e9, t["copy_"] / t["fused"],
                    t["eager"] / t["fused"], t["compile"] / t["fused"],
                ])
    return rows


HEADER = ["shape", "dtype", "op", "fused ms", "eager ms", "compile ms", "copy_ ms",
          "fused GB/s", "copy_/fused", "eager/fused", "compile/fused"]
