"""Per-call timing that keeps every sample (for the pytest-benchmark JSON, benchmark_json.py),
on a cold L2 by default: before every timed call, a write over twice the device's L2 evicts
what the previous call left there, so each call reads its inputs from HBM as it would inside a
model step (where other kernels run in between).  The write is outside the timed window: each
call is timed alone between two CUDA events.  On the CPU, wall-clock time per call.

SampleTimer has the signature of timing.time_interleaved, so op_suite.run_suite can use it."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch


class SampleTimer:
    def __init__(self, flush_l2: bool = True) -> None:
        self.samples: List[Dict[str, List[float]]] = []  # one dict per call of the timer
        self.flush_l2 = flush_l2
        self._scratch = None

    def _flush(self) -> None:
        if self._scratch is None:
            l2 = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
            self._scratch = torch.empty(max(2 * l2, 1 << 20), dtype=torch.uint8, device="cuda")
        self._scratch.fill_(1)

    def _time_one(self, fn: Callable[[], object], device: str) -> float:
        if not device.startswith("cuda"):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        if self.flush_l2:
            self._flush()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / 1e3

    def __call__(self, fns: Dict[str, Callable[[], object]], device: str = "cuda",
                 rounds: int = 7, inner: int = 3, warmup: int = 2) -> Dict[str, float]:
        """Median seconds per call of each function: `rounds` rounds, each calling every
        function `inner` times in turn (interleaved, so drift affects all alike)."""
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        samples: Dict[str, List[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                for _ in range(inner):
                    samples[name].append(self._time_one(fn, device))
        self.samples.append(samples)
        return {k: statistics.median(v) for k, v in samples.items()}
