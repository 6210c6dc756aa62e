"""Timing helpers shared by the benchmark scripts: interleaved medians on CPU or CUDA, the
markdown table, and the same measurements as pytest-benchmark JSON (``write_benchmark_json``),
so that two runs can be diffed with ``pytest-benchmark compare A.json B.json``."""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

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
    samples = time_interleaved_samples(fns, device, rounds, inner, warmup)
    return {k: statistics.median(v) for k, v in samples.items()}


def time_interleaved_samples(fns: Dict[str, Callable[[], object]], device: str = "cpu",
                             rounds: int = 7, inner: int = 3, warmup: int = 2
                             ) -> Dict[str, List[float]]:
    """Like :func:`time_interleaved`, but every round's seconds per call (``rounds`` values
    per function, each the mean of ``inner`` calls)."""
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
    return samples


def cpu_machine() -> str:
    """One line for a CPU report: CPU model, cores, Python, torch, threads."""
    import platform

    from ntm_engine.machine import cpu_name

    return (f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")


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


@dataclass
class Measurement:
    """One timed variant, as one pytest-benchmark entry: ``samples`` are seconds per call, one
    per round, each the mean of ``iterations`` calls; ``group`` gathers the variants that are
    compared (pytest-benchmark prints each group as one table)."""
    name: str
    group: str
    params: Dict[str, object]
    samples: List[float]
    iterations: int
    extra_info: Dict[str, object] = field(default_factory=dict)


def json_path_next_to(markdown_path: Optional[str]) -> Optional[str]:
    """``results/x.md`` -> ``results/x.json`` (None stays None)."""
    return None if not markdown_path else os.path.splitext(markdown_path)[0] + ".json"


def write_benchmark_json(path: str, measurements: Sequence[Measurement], *, source: str,
                         rounds: int, warmup: int) -> None:
    """Write ``measurements`` in pytest-benchmark's JSON format (machine and commit info, one
    entry per measurement with its stats and raw data), which ``pytest-benchmark compare``
    reads; ``source`` names the script (entries are ``source::name``)."""
    from pytest_benchmark import __version__
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
    from pytest_benchmark.stats import Stats
    from pytest_benchmark.utils import get_commit_info

    entries = []
    for m in measurements:
        stats = Stats()
        for seconds in m.samples:
            stats.update(seconds)
        entries.append({
            "group": m.group, "name": m.name, "fullname": f"{source}::{m.name}",
            "params": m.params, "param": "-".join(str(v) for v in m.params.values()),
            "extra_info": m.extra_info,
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": rounds,
                        "max_time": None, "min_time": None, "warmup": warmup},
            "stats": {**stats.as_dict(), "data": list(m.samples), "iterations": m.iterations},
        })
    doc = {"machine_info": pytest_benchmark_generate_machine_info(),
           "commit_info": get_commit_info(), "benchmarks": entries,
           "datetime": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
           "version": __version__}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"# wrote {len(entries)} pytest-benchmark entries to {path}", file=sys.stderr)
