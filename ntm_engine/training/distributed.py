"""Data-parallel training over several processes (``torchrun --nproc_per_node=N -m ntm_engine
train ...``): gloo on the CPU, NCCL on GPUs.

Every rank builds the same model from the same seed (rank 0's weights are broadcast anyway),
reads only its rows ``[r * B / N, (r + 1) * B / N)`` of the global batch of step ``s``
(:class:`~.batches.DataSource`: the batch is a pure function of ``(seed, s)``, so each rank
knows the whole batch's indices and loads its share) and trains on them with model noise
seeded by ``(seed, s, rank)``.  ``--parallel ddp`` (the default): every rank holds the whole
model, and after the backward pass the gradients are averaged over the
ranks in one flattened all-reduce (what ``DistributedDataParallel`` does, minus the overlap
with the backward pass): the objectives call model methods other than ``forward`` and the
reversible backward computes parameter gradients inside its own autograd functions, so the
gradients are reduced once they are all there rather than by DDP's per-parameter hooks.
Every rank then makes the same AdamW step and EMA update.  ``--parallel fsdp``: the model,
its gradients, the optimiser state and the EMA are sharded over the ranks instead
(:mod:`.fsdp`).  Rank 0 alone writes the run folder (checkpoints, metrics, pictures); the
others read its checkpoint on ``--resume``.  Stop decisions (budget, signals) and the
training clock are agreed on every iteration.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes (``size == 1``: not distributed)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder and logs."""
        return self.rank == 0

    # ------------------------------------------------------------------ batch split
    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of ``batch_size`` (which ``size`` divides)."""
        if batch_size % self.size:
            raise ConfigError(f"--batch-size {batch_size} (the global batch) must be divisible "
                              f"by the number of processes {self.size}")
        n = batch_size // self.size
        return slice(self.rank * n, (self.rank + 1) * n)

    def noise_stream(self, name: str = "model") -> str:
        """The seed stream ``name`` of this rank (``name`` itself in one process, so a
        single-process run is unchanged; ``"model"``: the model noise of a training step)."""
        return name if not self.enabled else f"{name}/rank{self.rank}"

    # ------------------------------------------------------------------ collectives
    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace every gradient by its mean over the ranks."""
        if not self.enabled:
            return
        params = [p for p in params if p.grad is not None]   # the same set on every rank
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(self.size)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n

    def mean(self, value: Tensor) -> Tensor:
        """The mean over the ranks of a scalar tensor (detached)."""
        v = value.detach().float().reshape(1).clone()
        if self.enabled:
            dist.all_reduce(v, op=dist.ReduceOp.SUM)
            v.div_(self.size)
        return v[0]

    def agree(self, elapsed_s: float, stop: bool) -> Tuple[float, bool]:
        """``(the largest training clock, whether any rank wants to stop)``."""
        if not self.enabled:
            return elapsed_s, stop
        t = torch.tensor([elapsed_s, float(stop)], dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t[0]), bool(t[1] > 0)

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank."""
        if self.enabled:
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")


PARALLEL = ("ddp", "fsdp")   # --parallel: replicated model + all-reduce, or FSDP2 sharding
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def check_parallel(parallel: str) -> None:
    """``parallel`` is one of :data:`PARALLEL` (:class:`ConfigError` naming ``--parallel``)."""
    if parallel not in PARALLEL:
        raise ConfigError(f"--parallel must be one of {', '.join(PARALLEL)}, got {parallel!r}")


def init_world(device=None, parallel: str = "ddp") -> Tuple[World, Optional[torch.device]]:
    """The :class:`World` of this process, joining the process group that ``torchrun``
    describes in the environment (``WORLD_SIZE`` > 1, or any size with ``parallel="fsdp"``,
    which needs a process group even for one process); returns it and the device to use
    (``cuda:LOCAL_RANK`` when ``device`` is CUDA or None with CUDA present, else ``device``).
    ``parallel="fsdp"`` without torchrun's environment is a :class:`ConfigError`."""
    check_parallel(parallel)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if parallel == "fsdp":
        missing = [v for v in TORCHRUN_VARIABLES if v not in os.environ]
        if missing and not dist.is_initialized():
            raise ConfigError(
                "--parallel fsdp shards the model over the processes of a torchrun launch "
                f"(torchrun --nproc_per_node=N -m ntm_engine train ...); this is a single "
                f"process without a process group (environment lacks {', '.join(missing)}). "
                "Launch it with torchrun, or drop --parallel fsdp to train in one process.")
    elif size <= 1:
        return World(), None if device is None else torch.device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = torch.device(device) if device is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.type == "cuda":
        torch.cuda.set_device(local)
        want = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want.type == "cuda" else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local), want

