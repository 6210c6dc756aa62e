"""Autoregressive flow blocks: decoding cost and activation-free training.

    python -m pytest bench/bench_autoregressive.py     # pytest-benchmark timings (CPU)
    python bench/bench_autoregressive.py [--out FILE]  # one-run tables (sets
                                                       #   MALLOC_MMAP_THRESHOLD_=65536)

Decoding: one :class:`~ntm_engine.nn.AutoregressiveFlowBlock` (Transformer 2 layers, width 64,
4 heads; output head random with std 0.02, so not the identity) on ``16 x L x 4`` float32
tokens, ``L`` = 16, 64, 256: the parallel forward, the exact KV-cache inverse (``L``
sequential single-token passes) as the Python loop and as the fused ``ops.autoregressive_decode``
(one call), and Jacobi decoding (``tol = 1e-5``, at most ``L + 1``
parallel iterations; iterations and final residual reported).

Training: one step (forward + backward of ``mean(1/2 |z|^2 - logdet)``) of a stack of blocks on
``64 x 64 x 4`` tokens, three ways on the same blocks: ``reversible``
(``InvertibleSequential(reversible=True)``: each block rebuilds its input with the KV-cache
inverse in the backward), ``plain`` autograd, and ``checkpoint``
(``torch.utils.checkpoint``, non-reentrant, around each block).  Memory: ``saved`` = bytes of
the unique storages autograd saved in the forward (``saved_tensors_hooks``; parameters
excluded; blind to what checkpoint keeps, so n/a there); ``held`` = bytes allocated by the
forward and still alive when it returns (profiler allocation events; the output ``z``
included) -- the activation memory.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, when not pip-installed
sys.path.insert(0, HERE)

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.profiler import record_function  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

from bench_reversible import _FORWARD_MARK, _allocation_levels  # noqa: E402
from ntm_engine.nn import AutoregressiveFlowBlock, InvertibleSequential  # noqa: E402
from timing import cpu_machine, emit_report, markdown_table, time_interleaved  # noqa: E402

DECODE_BATCH, PATCH, WIDTH, LAYERS, HEADS = 16, 4, 64, 2, 4
TOKENS = (16, 64, 256)
TRAIN_BATCH, TRAIN_TOKENS = 64, 64
DEPTHS = (1, 2, 4)
METHODS = ("reversible", "plain", "checkpoint")
MiB = 2.0 ** 20


def make_block(tokens: int, i: int = 0, seed: int = 0) -> AutoregressiveFlowBlock:
    torch.manual_seed(seed + i)
    block = AutoregressiveFlowBlock(tokens, PATCH, width=WIDTH, depth=LAYERS, heads=HEADS,
                                    reverse=i % 2 == 1)
    with torch.no_grad():
        block.out.weight.normal_(0, 0.02)
        block.out.bias.normal_(0, 0.02)
    return block


class Stack(nn.Module):
    """The same blocks trained three ways (module docstring)."""

    def __init__(self, blocks: List[nn.Module], method: str):
        super().__init__()
        self.method = method
        self.seq = InvertibleSequential(*blocks, reversible=method == "reversible")

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if self.method != "checkpoint":
            return self.seq(x)
        logdet = None
        for block in self.seq:
            x, ld = checkpoint(block, x, use_reentrant=False)
            logdet = ld if logdet is None else logdet + ld
        return x, logdet


def loss_fn(z: Tensor, logdet: Tensor) -> Tensor:
    return (0.5 * z.pow(2).sum((1, 2)) - logdet).mean()


def make_step(model: Stack, x: Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(*model(x)).backward()
    return step


def saved_bytes(model: Stack, x: Tensor) -> Optional[int]:
    if model.method == "checkpoint":
        return None
    storages: Dict[int, object] = {}

    def pack(t: Tensor) -> Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z, logdet = model(x)
    total = sum(s.nbytes() for k, s in storages.items() if k not in params)
    loss_fn(z, logdet).backward()
    return total


def held_bytes(model: Stack, x: Tensor) -> int:
    model.zero_grad(set_to_none=True)

    def forward_backward() -> None:
        with record_function(_FORWARD_MARK):
            z, logdet = model(x)
        loss_fn(z, logdet).backward()

    return _allocation_levels(forward_backward)[2]


def decode_fns(tokens: int) -> Tuple[Dict[str, Callable[[], object]], dict]:
    block = make_block(tokens)
    x = torch.randn(DECODE_BATCH, tokens, PATCH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y, _ = block(x)
        _, _, report = block.jacobi_inverse(y, tol=1e-5)
    fns = {"forward": lambda: block(x), "kv_inverse": lambda: block.inverse(y, fused=False),
           "fused_inverse": lambda: block.inverse(y, fused=True),
           "jacobi_inverse": lambda: block.jacobi_inverse(y, tol=1e-5)}
    return fns, dict(iterations=report.iterations, residual=report.residual)


def run_decode(rounds: int, log=print) -> List[list]:
    rows = []
    for tokens in TOKENS:
        fns, rep = decode_fns(tokens)
        with torch.no_grad():
            t = time_interleaved(fns, rounds=rounds, inner=1, warmup=1)
        rows.append([tokens, 1e3 * t["forward"], 1e3 * t["kv_inverse"], 1e3 * t["fused_inverse"],
                     1e3 * t["jacobi_inverse"], rep["iterations"], rep["residual"],
                     t["kv_inverse"] / t["forward"], t["fused_inverse"] / t["forward"]])
        log(rows[-1])
    return rows


def run_train(rounds: int, log=print) -> List[list]:
    x = torch.randn(TRAIN_BATCH, TRAIN_TOKENS, PATCH, generator=torch.Generator().manual_seed(2))
    rows = []
    for depth in DEPTHS:
        blocks = [make_block(TRAIN_TOKENS, i) for i in range(depth)]
        models = {m: Stack(blocks, m) for m in METHODS}
        mem = {m: (saved_bytes(models[m], x), held_bytes(models[m], x)) for m in METHODS}
        times = (time_interleaved({m: make_step(models[m], x) for m in METHODS}, rounds=rounds,
                                  inner=1, warmup=1) if depth == max(DEPTHS) else {})
        for m in METHODS:
            saved, held = mem[m]
            t = times.get(m)
            rows.append([depth, m, None if saved is None else saved / MiB, held / MiB,
                         None if t is None else 1e3 * t,
                         None if t is None else t / times["plain"]])
            log(rows[-1])
    return rows




# ----------------------------------------------------------------------------- pytest-benchmark


@pytest.mark.parametrize("what", ["forward", "kv_inverse", "fused_inverse", "jacobi_inverse"])
@pytest.mark.parametrize("tokens", TOKENS)
def test_decode(benchmark, tokens, what):
    fns, rep = decode_fns(tokens)
    benchmark.extra_info.update(rep)
    with torch.no_grad():
        benchmark.pedantic(fns[what], rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("method", METHODS)
def test_train_step(benchmark, method):
    x = torch.randn(TRAIN_BATCH, TRAIN_TOKENS, PATCH, generator=torch.Generator().manual_seed(2))
    model = Stack([make_block(TRAIN_TOKENS, i) for i in range(max(DEPTHS))], method)
    benchmark.extra_info.update(saved_bytes=saved_bytes(model, x), held_bytes=held_bytes(model, x))
    benchmark.pedantic(make_step(model, x), rounds=3, warmup_rounds=1)


# ----------------------------------------------------------------------------- script


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        # glibc's heap reuse hides freed activations; re-exec with the threshold set.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)
    torch.set_num_threads(args.threads)
    t0, load0 = time.time(), os.getloadavg()[0]
    decode = run_decode(args.rounds)
    train = run_train(args.rounds)
    text = (f"# Autoregressive flow blocks (cpu)\n\nDate: {datetime.date.today()}; machine: "
            f"{cpu_machine()}; load average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} "
            f"at the end; total {time.time() - t0:.0f} s.\n\n"
            f"## Decoding: one block, {DECODE_BATCH} x L x {PATCH} float32\n\n"
            + markdown_table(["L", "forward ms", "KV loop ms", "fused KV ms", "Jacobi ms",
                              "Jacobi iters", "Jacobi residual", "loop / forward",
                              "fused / forward"], decode)
            + f"\n\n## Training step: {TRAIN_BATCH} x {TRAIN_TOKENS} x {PATCH} float32\n\n"
            + markdown_table(["blocks", "method", "saved MiB", "held MiB", "step ms",
                              "time / plain"], train) + "\n")
    emit_report(text, args.out)


if __name__ == "__main__":
    main()
