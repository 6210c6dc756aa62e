"""Where the time of one NTM training step goes: the share of the ntm ops (the fused kernels),
the matmuls, attention, and the rest (issue 23, item 9).

    python bench/profile_step.py [--device cpu|cuda] [--threads 2] [--out FILE] [--json FILE]

One step = forward + backward of the mean trajectory NLL of 64 images at the default sizes of
``ntm train`` (coupling transporter), on 1x8x8 (digits) and 3x16x16 (colour patches), profiled
with ``torch.profiler`` over several steps after a warm-up.  Self time of each operator is put
into one class by its name (:data:`CLASSES`, first match wins); the table gives each class's
share of the summed self time.  On a GPU the CUDA kernel times are used instead of the CPU's.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, when not pip-installed
sys.path.insert(0, HERE)

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from ntm_engine.models import NTM  # noqa: E402
from timing import emit_report, markdown_table  # noqa: E402

BATCH, STEPS = 64, 5
SHAPES = {"1x8x8": (1, 8, 8), "3x16x16": (3, 16, 16)}
# operator name fragments of each class, tried in order (the first match wins)
CLASSES: List[Tuple[str, Tuple[str, ...]]] = [
    ("ntm ops", ("ntm::",)),
    ("attention", ("scaled_dot_product", "_flash_attention", "_efficient_attention",
                   "attention", "softmax")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
                "gemm", "aten::baddbmm")),
]


def classify(name: str) -> str:
    for cls, keys in CLASSES:
        if any(k in name for k in keys):
            return cls
    return "rest"


def step_fn(shape, device):
    torch.manual_seed(0)
    cfg = {**NTM.digits_config(conditional=True), "data_shape": shape}
    model = NTM(**cfg).to(device).train()
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(BATCH, *shape, generator=g) * 2 - 1).to(device)
    y = torch.randint(10, (BATCH,), generator=g).to(device)

    def step():
        model.zero_grad(set_to_none=True)
        model(x, y, torch.Generator(device=device).manual_seed(0)).mean().backward()
    return step


def shares(shape, device) -> Dict[str, float]:
    step = step_fn(shape, device)
    for _ in range(2):
        step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(STEPS):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    totals: Dict[str, float] = {c: 0.0 for c, _ in CLASSES}
    totals["rest"] = 0.0
    for e in prof.key_averages():
        t = e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total
        totals[classify(e.key)] += t
    whole = sum(totals.values()) or 1.0
    out = {k: v / whole for k, v in totals.items()}
    out["ms per step"] = whole / 1e3 / STEPS
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--json", help="also write the shares as JSON to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load0 = os.getloadavg()[0]
    results = {name: shares(shape, device) for name, shape in SHAPES.items()}
    load1 = os.getloadavg()[0]
    classes = [c for c, _ in CLASSES] + ["rest"]
    rows = [[name] + [f"{100 * r[c]:.1f}%" for c in classes] + [r["ms per step"]]
            for name, r in results.items()]
    what = "CUDA kernel" if device.type == "cuda" else "CPU self"
    text = (f"# Where an NTM training step spends its time ({device.type})\n\n"
            f"Date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} thread(s); load average {load0:.2f} "
            f"at the start, {load1:.2f} at the end.\n{BATCH} images, forward + backward, default "
            f"sizes (coupling transporter), {STEPS} profiled steps; shares of the summed "
            f"{what} time of the operators.\n\n"
            + markdown_table(["data"] + classes + ["profiled ms / step"], rows) + "\n")
    emit_report(text, args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "load": [load0, load1], "shares": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
