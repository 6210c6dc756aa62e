"""Memory and time of one NTM training step at batch 64: plain autograd vs the reversible
transporter vs reversible transporter + checkpointed predictor blocks.

    python bench/bench_train_memory.py [--threads 1] [--out FILE]   # CPU table (re-executes
                                                                     # with MALLOC_MMAP_THRESHOLD_)

Model: the default image architecture of ``ntm train`` (``NTM.digits_config``: width 128,
depth 4, 4 heads, patch 4, 4 coupling layers of hidden 128, T = 4) on ``1x8x8``, ``3x16x16``
and ``3x32x32`` inputs.  A step is ``zero_grad``, ``trajectory_nll(x).mean()``, backward and
an AdamW step.  Variants: ``plain`` (``reversible=False``), ``reversible`` (the default),
``reversible+ckpt`` (``predictor.checkpoint_blocks``, what ``--checkpoint-predictor`` sets).

Memory, from one profiled step (``torch.profiler``, ``profile_memory=True``; see
``bench_reversible.py``): *held after forward* (allocated by the forward and alive when it
returns: what is kept for the backward, the activation memory of the target) and *step peak*
(highest level during the step above the level before it, gradients and AdamW state
included); *saved by autograd*: unique storages packed by ``saved_tensors_hooks``
(parameters excluded; blind to the block inputs the checkpoint keeps itself).  Time: median of
interleaved steps (``bench/timing.py``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List

import torch
from torch.profiler import record_function

from bench_reversible import _FORWARD_MARK, _allocation_levels, machine
from ntm_engine.models import NTM
from ntm_engine.training.memory import saved_bytes
from timing import time_interleaved

BATCH = 64
SHAPES = ((1, 8, 8), (3, 16, 16), (3, 32, 32))
VARIANTS = {"plain": (False, False), "reversible": (True, False),
            "reversible+ckpt": (True, True)}
MIB = 2.0 ** 20


def make_step(shape, reversible: bool, checkpoint: bool) -> Dict[str, object]:
    """The model, its optimiser, a batch and one training step (a closure)."""
    torch.manual_seed(0)
    model = NTM.for_digits(False, data_shape=shape, reversible=reversible)
    model.predictor.checkpoint_blocks = checkpoint
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(BATCH, *shape) * 2 - 1

    def forward() -> torch.Tensor:
        return model.trajectory_nll(x, generator=torch.Generator().manual_seed(0)).mean()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with record_function(_FORWARD_MARK):
            loss = forward()
        loss.backward()
        opt.step()

    return dict(model=model, forward=forward, step=step)


def run(shapes=SHAPES, rounds: int = 3) -> List[dict]:
    rows = []
    for shape in shapes:
        parts = {name: make_step(shape, *flags) for name, flags in VARIANTS.items()}
        for p in parts.values():
            p["step"]()                                    # AdamW state exists from here on
        times = time_interleaved({k: p["step"] for k, p in parts.items()}, rounds=rounds,
                                 inner=1, warmup=0)
        for name, p in parts.items():
            end, peak, held = _allocation_levels(p["step"])
            rows.append(dict(shape="x".join(map(str, shape)), variant=name, ms=1e3 * times[name],
                             held=held / MIB, peak=peak / MIB,
                             saved=saved_bytes(p["forward"], p["model"]) / MIB))
    return rows


def table(rows: List[dict]) -> str:
    plain = {r["shape"]: r for r in rows if r["variant"] == "plain"}
    out = ["| shape | variant | step time (ms) | vs plain | held after forward (MiB) | "
           "vs plain | saved by autograd (MiB) | step peak (MiB) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = plain[r["shape"]]
        out.append(f"| {r['shape']} | {r['variant']} | {r['ms']:.0f} | {r['ms'] / p['ms']:.2f}x "
                   f"| {r['held']:.1f} | {r['held'] / p['held']:.3f} | {r['saved']:.1f} | "
                   f"{r['peak']:.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        # glibc's heap reuse hides freed activations; re-exec with the threshold set
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    text = f"{machine('cpu')}\n\n{table(run(rounds=args.rounds))}\n\n({time.time() - t0:.0f} s)"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
