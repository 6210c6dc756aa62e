"""Timing helpers shared by the benchmark scripts: interleaved medians on CPU or CUDA."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(fns: Dict[str, Callable[[], object]], device: str = "cpu",
                     rounds: int = 7, inner: int = 3, warmup: int = 2) -> Dict[str, float]:
    """Median seconds per call of each function, measured round-robin in one process.

    Interleaving the candidates in every round makes their *ratios* robust to the machine's
    load drifting during the run (these machines are shared).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if device.startswith("cuda"):
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(inner):
                    fn()
                stop.record()
                stop.synchronize()
                samples[name].append(start.elapsed_time(stop) / 1e3 / inner)
            else:
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples[name].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def markdown_header(header: List[str]) -> str:
    return "| " + " | ".join(header) + " |\n|" + "---|" * len(header)


def markdown_row(row: List[object]) -> str:
    """One table row; floats to 3 significant digits, None as n/a."""
    def fmt(v):
        if v is None:
            return "n/a"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return "| " + " | ".join(fmt(v) for v in row) + " |"


def markdown_table(header: List[str], rows: List[List[object]]) -> str:
    return "\n".join([markdown_header(header)] + [markdown_row(r) for r in rows])


def emit_report(text: str, path=None) -> None:
    """Print a benchmark report and, if ``path`` is given, write it there too."""
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text)
