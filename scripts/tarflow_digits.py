"""Train the standalone TarFlow on the 8x8 digits for a fixed wall-clock budget and report its
test bits/dim (17 bins, uniform dequantisation, the exact log-likelihood of the flow).

    python3 scripts/tarflow_digits.py [--seconds 150] [--patch 2] [--blocks 4] [--width 64]
                                      [--depth 2] [--plain] [--threads 2] [--out FILE.json]

Prints one JSON line (also written to ``--out``): steps, wall seconds, train/test bits/dim,
ms per sample of the KV-cache and the Jacobi decoders.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ntm_engine.data import dequantize, load_digits  # noqa: E402
from ntm_engine.models import TarFlow  # noqa: E402

LEVELS = 17


def evaluate(flow: TarFlow, x: torch.Tensor, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return float(flow.bits_per_dim(dequantize(x, LEVELS, g), LEVELS).mean())


def decode_ms(flow: TarFlow, method: str, n: int = 100) -> float:
    start = time.perf_counter()
    flow.sample(n, generator=torch.Generator().manual_seed(0), method=method, tol=1e-5)
    return 1000 * (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=150.0)
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--plain", action="store_true", help="plain autograd (not reversible)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, _ = load_digits("train")
    test, _ = load_digits("test")
    flow = TarFlow((1, 8, 8), patch_size=args.patch, blocks=args.blocks, width=args.width,
                   depth=args.depth, heads=4, reversible=not args.plain)
    opt = torch.optim.AdamW(flow.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    step, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        idx = torch.randint(0, len(train), (args.batch,), generator=g)
        loss = flow.bits_per_dim(dequantize(train[idx], LEVELS, g), LEVELS).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 1.0)
        opt.step()
        step += 1
    wall = time.perf_counter() - start
    flow.eval()
    result = dict(steps=step, seconds=round(wall, 1), reversible=not args.plain,
                  patch=args.patch, blocks=args.blocks, width=args.width, depth=args.depth,
                  params=sum(p.numel() for p in flow.parameters()),
                  train_bpd=round(evaluate(flow, train, 2), 4),
                  test_bpd=round(evaluate(flow, test, 3), 4),
                  kv_ms_per_sample=round(decode_ms(flow, "kv"), 3),
                  jacobi_ms_per_sample=round(decode_ms(flow, "jacobi"), 3))
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
