"""Quality against steps and time: the NTM against diffusers' schedulers driving a
flow-matching model (``docs/design.md`` section 6 for how we time).

:func:`compare_samplers` draws ``n`` samples from each sampler (the same labels and seed for
all), times them (ms per sample after a warm-up, NFE), rates them with a ``quality`` callable
(:mod:`.quality`: the metrics of ``ntm eval``) and writes ``quality_vs_steps.{md,png,json}``
(:mod:`.report`).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .names import STEPS
from .report import write_report
from .schedulers import SCHEDULERS, fm_velocity, sample_with_scheduler

__all__ = ["STEPS", "Sampler", "compare_samplers", "ntm_sampler_name", "samplers_for",
           "seed_summary", "time_sampler"]

WARMUP = 2   # samples drawn once before timing (first-call allocations)
Quality = Callable[[Tensor], Dict[str, float]]


@dataclass
class Sampler:
    """One row of the comparison: ``draw(n, y, generator) -> (x [n, ...], nfe)``."""
    name: str
    model: str
    steps: int
    draw: Callable[[int, Optional[Tensor], torch.Generator], Tuple[Tensor, int]]


def ntm_sampler_name(base: str, temperature: float) -> str:
    """The row name of an NTM sampler: ``base`` at temperature 1, else ``base@tau``."""
    return base if temperature == 1 else f"{base}@{temperature:g}"


def _ntm_sampler(model, name: str, steps: int, guidance: float,
                 temperature: float = 1.0) -> Sampler:
    # one predictor pass per step (the transporter inverse, run once, is not counted)
    return Sampler(ntm_sampler_name(name, temperature), "ntm", steps, lambda n, y, g: (
        model.sample(n, y=y, steps=steps, guidance=guidance, temperature=temperature,
                     generator=g), steps))


def _scheduler_sampler(fm, scheduler: str, steps: int, guidance: float) -> Sampler:
    def draw(n, y, g):
        p = next(fm.parameters())
        return sample_with_scheduler(fm_velocity(fm, y, guidance), scheduler, steps,
                                     (n, *fm.data_shape), g, shift=fm.shift, device=p.device,
                                     dtype=p.dtype)
    return Sampler(scheduler, "flow_matching", steps, draw)


def samplers_for(*, ntm=None, fm=None, ntm_ablation=None, steps: Sequence[int] = STEPS,
                 schedulers: Sequence[str] = tuple(SCHEDULERS),
                 ntm_steps: Optional[Sequence[int]] = None,
                 ablation_steps: Sequence[int] = (4,), guidance: float = 0.0,
                 temperatures: Sequence[float] = (1.0,)) -> List[Sampler]:
    """The rows to run: each of ``schedulers`` on ``fm`` at each of ``steps``; ``ntm`` at
    ``ntm_steps`` (default: every step count it was trained on); the identity-transporter
    ``ntm_ablation`` at ``ablation_steps``; all with classifier-free ``guidance`` (needs
    labels).  The two NTMs sample at each of ``temperatures`` (the scale of every step's
    noise, :meth:`NTM.sample <ntm_engine.models.NTM.sample>`; rows named ``ntm@0.8`` etc.
    below 1); the schedulers start from unscaled noise."""
    unknown = [s for s in schedulers if s not in SCHEDULERS]
    if unknown:
        raise ValueError(f"schedulers must be among {sorted(SCHEDULERS)}, got {unknown}")
    bad = [s for s in list(steps) + list(ntm_steps or []) + list(ablation_steps)
           if int(s) != s or s < 1]
    if bad:
        raise ValueError(f"step counts must be positive integers, got {bad}")
    out: List[Sampler] = []
    bad_tau = [tau for tau in temperatures if not (math.isfinite(tau) and tau >= 0)]
    if not temperatures or bad_tau or len(set(temperatures)) != len(temperatures):
        raise ValueError(f"temperatures must be distinct finite numbers >= 0, got "
                         f"{list(temperatures)}")
    if fm is not None:
        out += [_scheduler_sampler(fm, s, k, guidance) for s in schedulers for k in steps]
    if ntm is not None:
        out += [_ntm_sampler(ntm, "ntm", k, guidance, tau) for tau in temperatures
                for k in (ntm_steps or getattr(ntm, "trained_steps", (ntm.steps,)))]
    if ntm_ablation is not None:
        out += [_ntm_sampler(ntm_ablation, "ntm_identity_transporter", k, guidance, tau)
                for tau in temperatures for k in ablation_steps]
    if not out:
        raise ValueError("compare_samplers needs at least one of ntm, fm, ntm_ablation")
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_sampler(sampler: Sampler, n: int, y: Optional[Tensor], *, seed: int,
                 device) -> Tuple[Tensor, Dict[str, float]]:
    """``(samples [n, ...] on the CPU, {"nfe", "ms_per_sample", "wall_s"})``: a warm-up of
    :data:`WARMUP` samples, then ``n`` from ``seed`` timed as one batch."""
    device = torch.device(device)
    yd = None if y is None else y.to(device)
    sampler.draw(min(n, WARMUP), None if yd is None else yd[:WARMUP],
                 torch.Generator(device=device).manual_seed(seed + 1))
    _sync(device)
    t0 = time.perf_counter()
    x, nfe = sampler.draw(n, yd, torch.Generator(device=device).manual_seed(seed))
    _sync(device)
    wall = time.perf_counter() - t0
    return x.cpu(), {"nfe": int(nfe), "ms_per_sample": 1e3 * wall / n, "wall_s": wall}


def seed_summary(per_seed: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One row from the rows of one sampler at several noise seeds: the quality figures
    averaged, with ``<key>_sem`` (standard error of the mean over seeds, when there are
    several) and ``<key>_per_seed``; ``ms_per_sample`` the median; ``wall_s`` and
    ``samples_nonfinite`` summed."""
    first = per_seed[0]
    out: Dict[str, Any] = {k: first[k] for k in ("sampler", "model", "steps", "nfe")}
    out["seeds"] = [r["seed"] for r in per_seed]
    out["ms_per_sample"] = float(statistics.median(r["ms_per_sample"] for r in per_seed))
    out["wall_s"] = sum(r["wall_s"] for r in per_seed)
    out["samples_nonfinite"] = sum(r["samples_nonfinite"] for r in per_seed)
    for k in first:
        if k in out or k in ("seed",) or not isinstance(first[k], float):
            continue
        vals = [float(r[k]) for r in per_seed]
        out[k] = sum(vals) / len(vals)
        if len(vals) > 1:
            out[f"{k}_sem"] = statistics.stdev(vals) / math.sqrt(len(vals))
            out[f"{k}_per_seed"] = vals
    return out


def compare_samplers(*, ntm=None, fm=None, ntm_ablation=None, quality: Quality,
                     labels: Optional[Tensor] = None, n: int = 1000,
                     steps: Sequence[int] = STEPS,
                     schedulers: Sequence[str] = tuple(SCHEDULERS),
                     ntm_steps: Optional[Sequence[int]] = None,
                     ablation_steps: Sequence[int] = (4,), guidance: float = 0.0,
                     temperatures: Sequence[float] = (1.0,),
                     seed: Union[int, Sequence[int]] = 0, device="cpu",
                     out_dir=None, title: str = "Quality against steps",
                     meta: Optional[Dict[str, Any]] = None,
                     progress: bool = True) -> List[Dict[str, Any]]:
    """Rows ``{"sampler", "model", "steps", "nfe", "ms_per_sample", "wall_s",
    "samples_nonfinite", **quality(samples)}``, one per sampler of :func:`samplers_for`
    (models in eval mode on ``device``; ``labels [n]`` or None, the same for every sampler).
    ``seed``: one noise seed, or several: each sampler then draws ``n`` samples per seed and
    its row holds the mean of each figure with its standard error (:func:`seed_summary`).
    Non-finite samples are counted, then replaced (0 / +-1e3) before rating.  With
    ``out_dir``: writes the table, plot and JSON there (:func:`~.report.write_report`, with
    ``title`` and ``meta``, which gains ``n``, ``seed``, ``guidance``, ``temperatures`` and
    ``device``)."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if labels is not None and tuple(labels.shape) != (n,):
        raise ValueError(f"labels must have shape [{n}], got {list(labels.shape)}")
    if guidance != 0 and labels is None:
        raise ValueError(f"guidance {guidance} needs labels, got labels=None")
    seeds = [seed] if isinstance(seed, int) else list(seed)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seed must be one integer or distinct integers, got {seed!r}")
    samplers = samplers_for(ntm=ntm, fm=fm, ntm_ablation=ntm_ablation, steps=steps,
                            schedulers=schedulers, ntm_steps=ntm_steps,
                            ablation_steps=ablation_steps, guidance=guidance,
                            temperatures=temperatures)
    rows = []
    bar = tqdm([(s, k) for s in samplers for k in seeds], desc="compare", unit="draw",
               disable=not progress)
    per_seed: List[Dict[str, Any]] = []
    for s, k in bar:
        bar.set_postfix_str(f"{s.name} {s.steps} steps, seed {k}")
        x, timing = time_sampler(s, n, labels, seed=k, device=device)
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        x = torch.nan_to_num(x, nan=0.0, posinf=1e3, neginf=-1e3)
        per_seed.append({"sampler": s.name, "model": s.model, "steps": s.steps, **timing,
                         "seed": k, "samples_nonfinite": bad, **quality(x)})
        if len(per_seed) == len(seeds):
            rows.append(seed_summary(per_seed) if len(seeds) > 1 else
                        {k2: v for k2, v in per_seed[0].items() if k2 != "seed"})
            per_seed = []
    if out_dir is not None:
        write_report(rows, Path(out_dir), title=title, meta=dict(
            meta or {}, n=n, seed=seeds[0] if len(seeds) == 1 else seeds, guidance=guidance,
            temperatures=list(temperatures), device=str(device)))
    return rows
