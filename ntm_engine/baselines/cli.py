"""``ntm compare``: an NTM run against diffusers' schedulers on a flow-matching run (and the
identity-transporter ablation), quality against steps and time (:mod:`.compare`).

:func:`add_compare_arguments` and :func:`cmd_compare` serve ``ntm compare``
(:mod:`ntm_engine.cli.compare`) and ``bench/compare_samplers.py`` (its own parser).  Only the
command itself imports diffusers.
"""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .. import metrics
from ..machine import cpu_name
from ..models.flow_matching import architecture_differences
from ..training import DataConfig, test_data
from .names import SCHEDULER_NAMES, STEPS


def _int_list(s: str) -> List[int]:
    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, "
                                         f"got {s!r}")
    return vals


def _name_list(s: str) -> List[str]:
    vals = [v.strip() for v in s.split(",") if v.strip()]
    bad = [v for v in vals if v not in SCHEDULER_NAMES]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"expected comma-separated names among "
                                         f"{sorted(SCHEDULER_NAMES)}, got {s!r}")
    return vals


def add_compare_arguments(p) -> None:
    """The options of ``ntm compare`` on the (sub-)parser ``p``."""
    p.add_argument("ntm", help="NTM run folder, its checkpoints/ folder, or a checkpoint")
    p.add_argument("--fm", required=True, help="flow-matching run (--objective flow_matching)"
                   " with the same data and backbone")
    p.add_argument("--ablation", default=None,
                   help="identity-transporter NTM run (--transporter none), optional")
    p.add_argument("--n", type=int, default=1000, help="samples per sampler")
    p.add_argument("--steps", type=_int_list, default=list(STEPS),
                   help="scheduler step counts, comma-separated")
    p.add_argument("--schedulers", type=_name_list, default=list(SCHEDULER_NAMES),
                   help=f"comma-separated, among {','.join(SCHEDULER_NAMES)}")
    p.add_argument("--ntm-steps", type=_int_list, default=None,
                   help="NTM step counts (default: its trained steps)")
    p.add_argument("--ablation-steps", type=_int_list, default=[4])
    p.add_argument("--seed", type=int, default=0, help="noise seed, the same for every sampler")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance weight for every sampler (class-conditional "
                   "runs)")
    p.add_argument("--out", default=None, help="output folder (default: NTM_RUN/compare)")
    p.add_argument("--classifier", default=None, help="cached digits classifier (as ntm eval)")
    p.add_argument("--note", default=None, help="a line for the report's header (e.g. budgets)")
    p.add_argument("--no-ema", action="store_true", help="raw weights instead of EMA")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def machine() -> Dict[str, Any]:
    """What the timings were measured on."""
    import diffusers   # deferred: heavy, and the `ntm` parser imports this module
    info = {"platform": platform.platform(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "diffusers": diffusers.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def labels_and_quality(configs: Dict[str, Dict[str, Any]], n: int, *, classifier=None,
                       log=None) -> Tuple[Optional[torch.Tensor], Callable, Optional[float]]:
    """``(labels [n] or None, quality, reference)`` for runs of these configs (role ->
    config), which must share the dataset and class conditioning: digits are rated like ``ntm
    eval`` (the classifier; ``reference``: the training digits' distance), toys by the Frechet
    distance of raw values to the test set (``reference`` None)."""
    for key in ("dataset", "class_conditional"):
        vals = {role: cfg[key] for role, cfg in configs.items()}
        if len(set(vals.values())) > 1:
            raise ValueError(f"the runs must share {key}, got {vals}")
    cfg = next(iter(configs.values()))
    labels = torch.arange(n) % 10 if cfg["class_conditional"] else None
    if cfg["dataset"] == "digits":
        from .compare import digits_quality   # deferred: imports diffusers
        return (labels, *digits_quality(labels, classifier, log=log))
    x_test, _ = test_data(DataConfig(cfg["dataset"], cfg["class_conditional"]))

    def toy_quality(s: torch.Tensor) -> Dict[str, float]:
        return {"frechet_distance_raw": metrics.frechet_distance_features(s.flatten(1),
                                                                          x_test.flatten(1))}
    return labels, toy_quality, None


def cmd_compare(args, parser, *, load_model: Callable, device_of: Callable,
                log: Callable[[str], None]) -> int:
    """Run ``ntm compare`` (``load_model(path, device, use_ema) -> (model, checkpoint)`` and
    ``device_of(name)`` are the CLI's)."""
    from .compare import compare_samplers   # deferred: imports diffusers (heavy)
    from .report import markdown_table
    if args.n < 1:
        parser.error(f"--n must be a positive integer, got {args.n}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_of(args.device)
    runs = {"ntm": args.ntm, "fm": args.fm, "ablation": args.ablation}
    models, cks = {}, {}
    for role, path in runs.items():
        if path is not None:
            models[role], cks[role] = load_model(path, device, use_ema=not args.no_ema)
    for role, ck in cks.items():
        objective = ck.config.get("objective", "ntm")
        if (objective == "flow_matching") != (role == "fm"):
            parser.error(f"the {role} run {ck.path} must be "
                         f"{'a flow-matching' if role == 'fm' else 'an NTM'} run, got objective "
                         f"{objective!r}")
    try:
        labels, quality, reference = labels_and_quality(
            {r: ck.config for r, ck in cks.items()}, args.n, classifier=args.classifier,
            log=log)
    except ValueError as e:
        parser.error(str(e))
    if args.guidance != 0 and labels is None:
        parser.error(f"--guidance {args.guidance} needs class-conditional runs")
    diffs = architecture_differences(cks["fm"].config["model"], cks["ntm"].config["model"])
    if diffs:
        log("ntm compare: the backbones differ: " + ", ".join(
            f"{k} fm={a} ntm={b}" for k, a, b in diffs))
    meta = {"machine": machine(), "weights": "raw" if args.no_ema else "ema"}
    if args.note:
        meta["note"] = args.note
    if reference is not None:
        meta["reference_frechet_distance"] = reference
    for role, ck in cks.items():
        meta[f"{role}_run"] = {"path": str(ck.path), "step": ck.step,
                               "train_elapsed_s": ck.state.get("elapsed_s")}
    out = Path(args.out) if args.out else cks["ntm"].path.parent.parent / "compare"
    rows = compare_samplers(
        ntm=models["ntm"], fm=models["fm"], ntm_ablation=models.get("ablation"),
        quality=quality, labels=labels, n=args.n, steps=args.steps,
        schedulers=args.schedulers, ntm_steps=args.ntm_steps,
        ablation_steps=args.ablation_steps, guidance=args.guidance, seed=args.seed,
        device=device, out_dir=out,
        title=f"{cks['ntm'].config['dataset']}: quality against steps and time", meta=meta,
        progress=not args.no_progress)
    print(markdown_table(rows), end="")
    print(f"wrote {out}/quality_vs_steps.{{md,png,json}}")
    return 0
