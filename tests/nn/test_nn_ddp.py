"""DDP (gloo, 2 processes on CPU): the reversible stack's gradients reach every parameter
exactly once and equal single-process gradients."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stack_factory import make_stack

WORLD, B, DIM, CTX, STEPS = 2, 8, 6, 3, 2


def _batch(step: int):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(B, DIM, generator=g, dtype=torch.float64)
    c = torch.randn(B, CTX, generator=g, dtype=torch.float64)
    return x, c


def _loss(z, ld):
    # a per-sample mean: the shards' losses average to the full batch's
    return (0.5 * z.pow(2).sum(1) - ld + z[:, 0]).mean()


def _worker(rank: int, port: int, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        stack = make_stack(3, DIM, CTX, dropout=0.0)  # same seed: same weights on every rank
        model = torch.nn.parallel.DistributedDataParallel(stack)
        grads = []
        for step in range(STEPS):
            x, c = _batch(step)
            rows = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
            xs = x[rows].clone().requires_grad_()
            cs = c[rows].clone().requires_grad_()
            z, ld = model(xs, cs)
            assert type(z.grad_fn).__name__ == "_ReversibleStackBackward"
            _loss(z, ld).backward()
            grads.append([p.grad.clone() for p in stack.parameters()])
            stack.zero_grad(set_to_none=True)
        if rank == 0:
            torch.save(grads, out_path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
@pytest.mark.timeout(180)   # a gloo deadlock fails here instead of stalling CI
def test_ddp_gloo_two_processes_match_single_process(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    ddp_grads = torch.load(out)
    ref = make_stack(3, DIM, CTX, reversible=False)
    for step in range(STEPS):
        x, c = _batch(step)
        ref.zero_grad(set_to_none=True)
        z, ld = ref(x, c)
        _loss(z, ld).backward()
        assert len(ddp_grads[step]) == len(list(ref.parameters()))
        for name, got, p in zip([n for n, _ in ref.named_parameters()], ddp_grads[step],
                                ref.parameters()):
            err = (got - p.grad).abs().max().item()
            assert err <= 1e-10 * p.grad.abs().max().item() + 1e-15, (step, name, err)
