"""Memory per rank of one training step, replicated (``--parallel ddp``) vs sharded
(``--parallel fsdp``), over 2 CPU processes (gloo).

    python bench/bench_fsdp_memory.py [--width 512] [--depth 8] [--out FILE]

Model: the digits NTM with a wide predictor (``--width``, ``--depth``) and 4 couplings of
``--width`` hidden units, batch 16, fp32.  Per rank, after :meth:`Trainer.train_step`:

* *held*: bytes of the tensors the run keeps between steps, counted from the tensors
  themselves -- parameters, gradients, AdamW state and EMA weights, each this rank's part
  (a shard under FSDP);
* *largest unit*: the biggest FSDP unit (parameters a rank gathers at once, and their
  gradient before it is reduce-scattered) -- the transient a sharded step adds to *held*;
* *peak RSS*: ``ru_maxrss`` of the rank's process over the whole step (set-up included:
  each rank builds the whole model on the CPU before sharding it), with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors return to the system (docs/design.md
  section 6); *RSS growth in the step*: ``ru_maxrss`` after the first step minus before it;
* *step s*: wall time of a second step (both processes share this machine's cores).
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ntm_engine.training import Trainer, build_model, make_config  # noqa: E402
from ntm_engine.training.distributed import World  # noqa: E402
from ntm_engine.training.optim import local  # noqa: E402

WORLD = 2
MIB = 2.0 ** 20


def _bytes(tensors) -> int:
    """Bytes this process holds of ``tensors`` (its shard of a sharded one)."""
    return sum(local(t).numel() * local(t).element_size() for t in tensors)


def _whole(module) -> int:
    """Bytes of ``module``'s parameters gathered (a ``DTensor``'s numel is the whole one)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _largest_unit(model) -> int:
    """Bytes of the biggest FSDP unit gathered: a predictor block, the rest of the
    predictor, the transporter (the units of :func:`~ntm_engine.training.fsdp.shard_model`)."""
    p = model.predictor
    blocks = [_whole(b) for b in p.blocks]
    return max(max(blocks), _whole(p) - sum(blocks), _whole(model.transporter))


def _rank(rank, port, cfg, parallel, out, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        t = Trainer(cfg, out, device="cpu", world=World(rank=rank, size=WORLD),
                    parallel=parallel, progress=False, plots=False, log=lambda m: None)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t.train_step()   # (the first step also allocates the AdamW state)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.time()
        t.train_step()
        step_s = time.time() - t0
        params = list(t.model.parameters())
        opt = [v for st in t.session.optimizer.state.values() for v in st.values()
               if torch.is_tensor(v)]
        rec = dict(params=_bytes(params), grads=_bytes(p.grad for p in params),
                   adam=_bytes(opt), ema=_bytes(t.ema.model.parameters()),
                   unit=_largest_unit(t.model) if parallel == "fsdp" else 0,
                   peak_rss=after * 1024, step_rss=(after - before) * 1024, step_s=step_s)
        torch.save(rec, Path(result) / f"{parallel}_rank{rank}.pt")
        t.close()
    finally:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":   # (read by glibc at start)
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    cfg = make_config("digits", model=dict(width=args.width, depth=args.depth, heads=8,
                                           transporter_hidden=args.width),
                      batch_size=16, iters=1, eval_samples=0).to_dict()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for parallel in ("ddp", "fsdp"):
            mp.spawn(_rank, args=(_port(), cfg, parallel, f"{tmp}/{parallel}", tmp),
                     nprocs=WORLD)
            for r in range(WORLD):
                rows.append((parallel, r, torch.load(Path(tmp) / f"{parallel}_rank{r}.pt")))
    n = sum(v.numel() for v in build_model(cfg).parameters())
    lines = [f"CPU, {WORLD} processes (gloo), 1 thread each; digits NTM width {args.width}, "
             f"depth {args.depth}, {n / 1e6:.1f}M parameters ({n * 4 / MIB:.0f} MiB fp32), "
             "batch 16", "",
             "| parallel | rank | params | grads | AdamW | EMA | held | largest unit "
             "(gathered) | peak RSS | RSS growth in the step | 2nd step s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for parallel, r, d in rows:
        held = d["params"] + d["grads"] + d["adam"] + d["ema"]
        mib = [f"{d[k] / MIB:.1f}" for k in ("params", "grads", "adam", "ema")]
        lines.append(f"| {parallel} | {r} | {' | '.join(mib)} | {held / MIB:.1f} | "
                     f"{d['unit'] / MIB:.1f} | {d['peak_rss'] / MIB:.0f} | "
                     f"{d['step_rss'] / MIB:.0f} | {d['step_s']:.2f} |")
    lines.append("\n(MiB; held = params + grads + AdamW + EMA, this rank's part)")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
