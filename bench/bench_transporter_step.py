"""One NTM training step per transporter and backward mode (issue: the autoregressive
transporter trained at the coupling's cost).

    python bench/bench_transporter_step.py [--threads 2] [--out FILE] [--json FILE]
    python -m pytest bench/bench_transporter_step.py --benchmark-json=FILE   # pytest-benchmark

A step is forward + backward of the mean trajectory NLL (``model(x, y).mean()``) of 64 images
at the default sizes of ``ntm train`` (predictor width 128, depth 4; coupling: 4 couplings of
128 units; autoregressive: 2 blocks of width 64, 2 layers), on 1x8x8 (digits) and 3x16x16
(colour patches), float32, for:

* ``coupling`` -- the MLP coupling transporter, reversible backward (inputs rebuilt by the
  inverse, as cheap as the forward);
* ``autoregressive/inverse`` -- the autoregressive blocks, inputs rebuilt by the token-by-token
  KV-cache inverse (no stored activations);
* ``autoregressive/recompute`` -- the same blocks, each block's input kept and its forward
  re-run in one parallel pass in the backward (the default for this kind);
* ``none`` -- the identity transporter (the predictor alone).

``--grouping`` adds a table: the same steps with the transporter run once over all step-count
groups' rows (``models.loss.group_levels``, the default) against once per group (before).

Times are interleaved medians in one process (their ratios are what to read on a shared
machine); ``held MiB`` is what the forward allocated and still holds when it returns (the
activations, profiler allocation events); the load average is printed at the start and end.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Callable, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, when not pip-installed
sys.path.insert(0, HERE)

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.profiler import record_function  # noqa: E402

from bench_reversible import _FORWARD_MARK, _allocation_levels  # noqa: E402
from ntm_engine.models import NTM  # noqa: E402
from ntm_engine.models import loss as loss_module  # noqa: E402
from timing import cpu_machine, emit_report, markdown_table, time_interleaved  # noqa: E402

BATCH = 64
SHAPES = {"1x8x8": (1, 8, 8), "3x16x16": (3, 16, 16)}
VARIANTS = {
    "coupling": dict(transporter="coupling"),
    "autoregressive/inverse": dict(transporter="autoregressive", transporter_layers=2,
                                   transporter_hidden=64, transporter_backward="inverse"),
    "autoregressive/recompute": dict(transporter="autoregressive", transporter_layers=2,
                                     transporter_hidden=64, transporter_backward="recompute"),
    "none": dict(transporter="none"),
}
MiB = 2.0 ** 20


def make_model(shape: Tuple[int, ...], variant: str) -> NTM:
    torch.manual_seed(0)
    cfg = {**NTM.digits_config(conditional=True), "data_shape": shape, **VARIANTS[variant]}
    cfg["patch_size"] = 4 if shape[-1] >= 8 else 2
    model = NTM(**cfg).train()
    with torch.no_grad():   # away from the identity start, so the inverse is not trivial
        for p in model.transporter.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def make_step(model: NTM, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x, y, torch.Generator(device=x.device).manual_seed(0)).mean().backward()
    return step


def held_mib(model: NTM, x: torch.Tensor, y: torch.Tensor) -> float:
    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        with record_function(_FORWARD_MARK):
            loss = model(x, y, torch.Generator().manual_seed(0)).mean()
        loss.backward()
    return _allocation_levels(forward_backward)[2] / MiB


def data(shape: Tuple[int, ...]) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.rand(BATCH, *shape, generator=g) * 2 - 1,
            torch.randint(10, (BATCH,), generator=g))


def run(rounds: int, device: torch.device = torch.device("cpu"), log=print) -> List[list]:
    """Rows ``[data, variant, step ms, time / coupling, held MiB (CPU only)]``."""
    rows = []
    for name, shape in SHAPES.items():
        x, y = (t.to(device) for t in data(shape))
        models = {v: make_model(shape, v).to(device) for v in VARIANTS}
        held = {v: held_mib(m, x, y) if device.type == "cpu" else None
                for v, m in models.items()}
        times = time_interleaved({v: make_step(m, x, y) for v, m in models.items()},
                                 device=str(device), rounds=rounds, inner=1, warmup=1)
        for v in VARIANTS:
            rows.append([name, v, 1e3 * times[v], times[v] / times["coupling"], held[v]])
            log(rows[-1])
    return rows


def run_grouping(rounds: int, device: torch.device = torch.device("cpu"), log=print
                 ) -> List[list]:
    """Rows ``[data, variant, one call ms, per group ms, per group / one call]``: the
    transporter run once over all step-count groups' rows against once per group."""
    real = loss_module.group_levels

    def per_group(model, groups):
        return [model.predict_levels(X, t, y) for _, X, t, y in groups]

    rows = []
    try:
        for name, shape in SHAPES.items():
            x, y = (t.to(device) for t in data(shape))
            for v in ("coupling", "autoregressive/recompute"):
                step = make_step(make_model(shape, v).to(device), x, y)

                def with_levels(levels):
                    def call() -> None:
                        loss_module.group_levels = levels
                        step()
                    return call

                t = time_interleaved({"one": with_levels(real), "per": with_levels(per_group)},
                                     device=str(device), rounds=rounds, inner=1, warmup=1)
                rows.append([name, v, 1e3 * t["one"], 1e3 * t["per"], t["per"] / t["one"]])
                log(rows[-1])
    finally:
        loss_module.group_levels = real
    return rows


# ----------------------------------------------------------------------------- pytest-benchmark


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_train_step(benchmark, shape, variant):
    x, y = data(SHAPES[shape])
    model = make_model(SHAPES[shape], variant)
    benchmark.pedantic(make_step(model, x, y), rounds=3, warmup_rounds=1)


# ----------------------------------------------------------------------------- script


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    parser.add_argument("--grouping", action="store_true",
                        help="also time one transporter call for all step counts vs one per count")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0, t0 = os.getloadavg()[0], time.time()
    rows = run(args.rounds, torch.device(args.device))
    grouping = run_grouping(args.rounds, torch.device(args.device)) if args.grouping else []
    load1 = os.getloadavg()[0]
    text = (f"# NTM training step per transporter and backward mode ({args.device})\n\n"
            f"Date: {datetime.date.today()}; machine: {cpu_machine()}; load average {load0:.2f} at "
            f"the start, {load1:.2f} at the end; total {time.time() - t0:.0f} s.\n"
            f"{BATCH} images, forward + backward of the mean trajectory NLL, default sizes.\n\n"
            + markdown_table(["data", "transporter / backward", "step ms", "time / coupling",
                              "held MiB"], rows) + "\n")
    if grouping:
        text += ("\nThe transporter once over all step-count groups' rows (one call) against once "
                 "per group:\n\n" + markdown_table(["data", "transporter", "one call ms",
                                                    "per group ms", "per group / one call"],
                                                   grouping) + "\n")
    emit_report(text, args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": cpu_machine(), "load": [load0, load1],
                       "rows": [dict(zip(["data", "variant", "step_ms", "ratio", "held_mib"], r))
                                for r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
