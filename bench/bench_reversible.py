"""Activation-free training: step time and activation memory of deep coupling stacks.

    python -m pytest bench/bench_reversible.py          # pytest-benchmark timings (CPU)
    python bench/bench_reversible.py [--out FILE]       # one-run table (CPU; sets
                                                        #   MALLOC_MMAP_THRESHOLD_=65536)
    python bench/bench_reversible.py --device cuda      # the same on a GPU

Model: ``depth`` :class:`~ntm_engine.nn.AffineCoupling` layers on a ``256 x 1024`` float32
input (kept half alternating between the first and the second 512 features), each with an MLP
conditioner ``512 -> 1024 -> SiLU -> 1024`` (``hidden=1024``, one hidden layer), last layer
small random (not zero, so the flow is not the identity).  Loss:
``mean(1/2 |z|^2 - logdet)``; a step is forward + backward, with ``zero_grad(set_to_none=True)``.

Methods, all on the same layers:

* ``reversible``: ``InvertibleSequential(reversible=True)`` (ours: one autograd Function that
  rebuilds each layer's input from its output in the backward),
* ``plain``: ``InvertibleSequential(reversible=False)`` (plain autograd),
* ``checkpoint``: ``torch.utils.checkpoint.checkpoint`` around each layer (non-reentrant),
* ``memcnn``: memcnn's ``InvertibleModuleWrapper`` around each layer (``keep_input=False``),
  skipped when memcnn is not installed.

Memory (docs/design.md, section 6).  CPU: ``saved``: bytes of the unique storages autograd saved
(``saved_tensors_hooks``; parameters excluded; blind to storage that checkpoint/memcnn keep
privately, so shown for reversible/plain only); ``held``: bytes allocated during the forward and
still alive when the backward starts (the profiler's allocation events, ``profile_memory=True``)
-- the activation memory; ``peak``: the highest allocation level during forward + backward above
the level before the step (this includes the parameter gradients, which every method ends with).
CUDA: ``held`` from ``torch.cuda.memory_allocated`` before/after the forward, ``peak`` from
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, when not pip-installed
sys.path.insert(0, HERE)

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

from ntm_engine.nn import AffineCoupling, InvertibleSequential  # noqa: E402
from timing import emit_report  # noqa: E402

BATCH, DIM, HIDDEN, COND_DEPTH = 256, 1024, 1024, 1
DEPTHS = (8, 16, 32, 64)
METHODS = ("reversible", "plain", "checkpoint", "memcnn")
MiB = 2.0 ** 20

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from memcnn import InvertibleModuleWrapper  # the best-known peer
except Exception:  # noqa: BLE001  (not installed, or broken against this torch)
    InvertibleModuleWrapper = None


# ----------------------------------------------------------------------------- models


def make_layers(depth: int, seed: int = 0, dim: int = DIM, hidden: int = HIDDEN) -> List[nn.Module]:
    """``depth`` couplings whose kept half alternates (first / second half of the features)."""
    torch.manual_seed(seed)
    layers = []
    for i in range(depth):
        mask = torch.arange(dim) < dim // 2 if i % 2 == 0 else torch.arange(dim) >= dim // 2
        layer = AffineCoupling(dim, hidden=hidden, depth=COND_DEPTH, mask=mask, clamp=2.0)
        with torch.no_grad():
            layer.net[-1].weight.normal_(0.0, 1e-3)
        layers.append(layer)
    return layers


class _MemcnnFn(nn.Module):
    """Adapter for memcnn: ``forward(x) -> (y, logdet)``, ``inverse(y, logdet) -> x``."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.layer(x)

    def inverse(self, y: Tensor, logdet: Optional[Tensor] = None) -> Tensor:
        return self.layer.inverse(y)[0]


class Stack(nn.Module):
    """The same layers run by one of :data:`METHODS`; ``forward(x) -> (z, logdet)``."""

    def __init__(self, layers: List[nn.Module], method: str):
        super().__init__()
        self.method = method
        if method in ("reversible", "plain"):
            self.body = InvertibleSequential(*layers, reversible=method == "reversible")
        elif method == "checkpoint":
            self.body = nn.ModuleList(layers)
        elif method == "memcnn":
            if InvertibleModuleWrapper is None:
                raise RuntimeError("memcnn is not installed")
            self.body = nn.ModuleList(
                InvertibleModuleWrapper(_MemcnnFn(l), keep_input=False, keep_input_inverse=False)
                for l in layers)
        else:
            raise ValueError(f"unknown method {method!r}")

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if self.method in ("reversible", "plain"):
            return self.body(x)
        logdet = None
        for layer in self.body:
            if self.method == "checkpoint":
                x, ld = checkpoint(layer, x, use_reentrant=False)
            else:
                x, ld = layer(x)
            logdet = ld if logdet is None else logdet + ld
        return x, logdet


def available_methods() -> List[str]:
    return [m for m in METHODS if m != "memcnn" or InvertibleModuleWrapper is not None]


def loss_fn(z: Tensor, logdet: Tensor) -> Tensor:
    return (0.5 * z.pow(2).sum(1) - logdet).mean()


def make_step(model: Stack, x: Tensor) -> Callable[[], None]:
    """One training step (forward + backward) on a fresh copy of ``x`` (memcnn frees its
    input's storage)."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        z, logdet = model(x.clone())
        loss_fn(z, logdet).backward()

    return step


# ----------------------------------------------------------------------------- measuring


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def saved_bytes(model: Stack, x: Tensor) -> Optional[int]:
    """Bytes of unique storages saved by autograd in one forward (parameters excluded)."""
    if model.method not in ("reversible", "plain"):
        return None
    storages: Dict[Tuple[str, int], object] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        storages[(str(t.device), s.data_ptr())] = s
        return t

    params = {(str(p.device), p.untyped_storage().data_ptr()) for p in model.parameters()}
    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z, logdet = model(x.clone())
    total = sum(s.nbytes() for k, s in storages.items() if k not in params)
    loss_fn(z, logdet).backward()
    return total


_FORWARD_MARK = "ntm_bench::forward"


def _allocation_levels(fn: Callable[[], object]) -> Tuple[int, int, int]:
    """Run ``fn`` under the profiler (``profile_memory=True``).  From its CPU allocation events
    (``+size`` / ``-size`` in time order; levels relative to the start) return ``(level at
    the end, highest level, level when the first ``record_function(_FORWARD_MARK)`` range
    ended)``."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events: List[Tuple[int, int]] = []
    mark_end = None
    todo = list(prof.profiler.kineto_results.experimental_event_tree())
    while todo:
        e = todo.pop()
        if e.typed[0] == _EventType.Allocation and str(e.extra_fields.device) == "cpu":
            events.append((e.start_time_ns, e.extra_fields.alloc_size))
        elif e.name == _FORWARD_MARK and (mark_end is None or e.end_time_ns < mark_end):
            mark_end = e.end_time_ns
        todo.extend(e.children)
    level = peak = at_mark = 0
    for t, size in sorted(events):
        level += size
        peak = max(peak, level)
        if mark_end is not None and t <= mark_end:
            at_mark = level
    return level, peak, at_mark


def cpu_memory(model: Stack, x: Tensor) -> Tuple[int, int]:
    """``(held, peak)`` bytes from the profiler's allocation events of one forward + backward
    (gradients freed before it): allocated by the forward and alive at its end (activations,
    output); the highest level above the start (parameter gradients included)."""
    from torch.profiler import record_function

    model.zero_grad(set_to_none=True)
    xi = x.clone()

    def forward_backward() -> None:
        with record_function(_FORWARD_MARK):
            z, logdet = model(xi)
        loss_fn(z, logdet).backward()

    _, peak, held = _allocation_levels(forward_backward)
    return held, peak


def cuda_memory(model: Stack, x: Tensor) -> Tuple[int, int]:
    """``(held, peak)`` bytes on the GPU: allocated by the forward and alive at its end; the
    step's peak above the level before it."""
    model.zero_grad(set_to_none=True)
    xi = x.clone()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    z, logdet = model(xi)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - base
    loss_fn(z, logdet).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return held, peak


def time_steps(steps: Dict[str, Callable[[], None]], device: str, rounds: int,
               warmup: int = 1) -> Dict[str, float]:
    """Median seconds per step of each method, interleaved round-robin."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    _sync(device)
    samples: Dict[str, List[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def run(depths=DEPTHS, device: str = "cpu", rounds: Optional[Dict[int, int]] = None,
        methods: Optional[List[str]] = None, log=print) -> List[dict]:
    """Measure every method at every depth; one row per (depth, method)."""
    methods = methods or available_methods()
    rounds = rounds or {}
    rows = []
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, DIM, generator=g).to(device)
    for depth in depths:
        layers = make_layers(depth)
        models = {m: Stack(layers, m).to(device) for m in methods}
        grad_bytes = sum(p.numel() * p.element_size() for l in layers for p in l.parameters())
        mem = {}
        if device.startswith("cuda"):  # lazy initialisations (cuBLAS workspace) out of the way
            for model in models.values():
                make_step(model, x)()
        for m, model in models.items():
            held, peak = (cuda_memory if device.startswith("cuda") else cpu_memory)(model, x)
            mem[m] = (saved_bytes(model, x), held, peak)
        n = rounds.get(depth, 3 if depth <= 16 else (2 if depth <= 32 else 1))
        # the memory measurements above ran each method twice: they were the warm-up
        times = time_steps({m: make_step(model, x) for m, model in models.items()}, device, n,
                           warmup=0)
        for m in methods:
            saved, held, peak = mem[m]
            rows.append(dict(depth=depth, method=m, time=times[m], rounds=n, saved=saved,
                             held=held, peak=peak, grads=grad_bytes,
                             time_ratio=times[m] / times["plain"],
                             held_ratio=held / mem["plain"][1]))
            log(f"depth {depth:3d} {m:11s} step {times[m] * 1e3:8.1f} ms "
                f"({times[m] / times['plain']:.2f}x plain)  held {held / MiB:8.3f} MiB  "
                f"peak {peak / MiB:7.1f} MiB (grads {grad_bytes / MiB:.1f})" +
                ("" if saved is None else f"  saved {saved / MiB:8.3f} MiB"))
        del models, layers
    return rows


def table(rows: List[dict]) -> str:
    head = ("| depth | method | step time (ms) | vs plain | held after forward (MiB) | vs plain "
            "| saved by autograd (MiB) | step peak (MiB) | peak above param grads (MiB) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        saved = "—" if r["saved"] is None else f"{r['saved'] / MiB:.3f}"
        lines.append(f"| {r['depth']} | {r['method']} | {r['time'] * 1e3:.0f} | "
                     f"{r['time_ratio']:.2f}x | {r['held'] / MiB:.3f} | {r['held_ratio']:.4f} | "
                     f"{saved} | {r['peak'] / MiB:.1f} | {(r['peak'] - r['grads']) / MiB:.1f} |")
    return "\n".join(lines)


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()}-core {name}, {torch.backends.cpu.get_cpu_capability()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}")


# ----------------------------------------------------------------------------- pytest-benchmark


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("depth", DEPTHS)
def test_step(benchmark, depth, method):
    if method == "memcnn" and InvertibleModuleWrapper is None:
        pytest.skip("memcnn is not installed")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, DIM, generator=g)
    model = Stack(make_layers(depth), method)
    held, peak = cpu_memory(model, x)
    benchmark.extra_info.update(held_bytes=held, peak_bytes=peak,
                                saved_bytes=saved_bytes(model, x))
    benchmark.pedantic(make_step(model, x), rounds=3 if depth <= 16 else 1, warmup_rounds=1)


# ----------------------------------------------------------------------------- script


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    parser.add_argument("--methods", default=None, help="comma-separated subset of " +
                        ",".join(METHODS))
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds per depth (default: 3 up to depth 16, 2 at 32, "
                        "1 at 64)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    if args.device == "cpu" and os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        # glibc's heap reuse hides freed activations from resident memory; re-exec with the
        # threshold set, as docs/design.md, section 6, asks for CPU memory numbers.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    depths = [int(d) for d in args.depths.split(",")]
    methods = args.methods.split(",") if args.methods else None
    rounds = {d: args.rounds for d in depths} if args.rounds else None
    t0 = time.time()
    rows = run(depths, args.device, rounds, methods)
    text = (f"# Reversible stacks: step time and activation memory ({args.device})\n\n"
            f"Date: {datetime.date.today()}; machine: {machine(args.device)}; "
            f"input {BATCH} x {DIM} float32, conditioner {DIM // 2}->{HIDDEN}->{DIM}; "
            f"total {time.time() - t0:.0f} s.\n\n" + table(rows) + "\n")
    emit_report(text, args.out)


if __name__ == "__main__":
    main()
