"""What the subcommands share: argument types, the device and thread options, the log."""
from __future__ import annotations

import argparse
import math
import os
import time
from typing import List, Optional

import torch

from .. import logs


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` that states each default once: an option's default is appended only when it
    is a value (not None or False) and its help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                and "default" not in text and "%(default)" not in text):
            text += " (default: %(default)s)"
        return text


def positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_float(s: str) -> float:
    v = float(s)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
    return v


def nonneg_float(s: str) -> float:
    v = float(s)
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {s}")
    return v


def int_list(s: str) -> List[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")


def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice)")


def setup_device(args) -> torch.device:
    """Apply ``--threads`` and return the device of ``--device`` (SystemExit if unusable)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return device_named(args.device)


def note_busy_cores(device: torch.device) -> None:
    """For a long CPU job that is about to start (training, distillation): log
    :func:`busy_cores_note` of this process's threads, its usable cores and the 1-minute load
    average, if it has one (after the job's input checks, so an error stays the only line)."""
    if device.type != "cpu" or not hasattr(os, "getloadavg"):
        return
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    note = busy_cores_note(torch.get_num_threads(), cores, os.getloadavg()[0])
    if note:
        log(note)


def busy_cores_note(threads: int, cores: int, load: float) -> Optional[str]:
    """A warning when ``threads`` torch threads will not find idle cores: the 1-minute load
    average ``load`` (other processes; this one has not started working) leaves fewer than
    ``threads`` of ``cores`` free.  Torch's CPU threads wait for each other by spinning, so a
    busy core costs far more than its share: on 2 cores next to one busy process a 2-thread
    digits training step took 1.2-1.5 s against 127 ms alone, and 1 thread 190 ms.  None
    when the cores are free (or the job uses one thread)."""
    free = max(1, int(cores - load + 0.5))
    if threads <= 1 or threads <= free:
        return None
    return (f"warning: load average {load:.1f} on {cores} cores leaves about {free} free for "
            f"{threads} threads; torch's threads spin waiting for each other, so a busy core "
            f"can slow every step several times over: --threads {free} may be faster")


def device_named(name: str) -> torch.device:
    """The device ``--device name`` means (``auto``: cuda if available; SystemExit if
    unusable)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise SystemExit(f"ntm: error: bad --device {name!r}: {e}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"ntm: error: --device {name} requested but CUDA is not available")
    return dev


log = logs.log


def timed_samples(model, n: int, y, device, **kw):
    """``(samples [n, ...] on the CPU, seconds)`` after a warm-up draw of 2 (first-call
    allocations), so the time is the steady state.  ``kw``: :meth:`NTM.sample` options and
    ``seed``."""
    seed = kw.pop("seed")
    y = None if y is None else y.to(device)
    model.sample(min(n, 2), y=None if y is None else y[:2], **kw,
                 generator=torch.Generator(device=device).manual_seed(0))
    g = torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    x = model.sample(n, y=y, generator=g, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return x.cpu(), time.perf_counter() - t0
