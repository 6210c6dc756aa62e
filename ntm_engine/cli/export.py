"""``ntm export``: write a run's model as a pretrained folder (``config.json``,
``model.safetensors``, a ``README.md`` model card) that ``NTM.from_pretrained`` loads anywhere
and ``ntm sample``/``ntm eval`` take like a run."""
from __future__ import annotations

from ..training import export_run
from .common import log


def add_parser(sub) -> None:
    e = sub.add_parser(
        "export", help="write a run's model as a pretrained folder (from_pretrained)",
        description="Write the model of a training run (its EMA weights) as a folder holding "
        "config.json, model.safetensors and a README.md model card, loadable with "
        "NTM.from_pretrained(DIR) (or FlowMatchingModel...) without the run folder.")
    e.add_argument("run", help="run folder, its checkpoints/ folder, or a checkpoint folder")
    e.add_argument("out", help="the folder to write (created; its files are replaced)")
    e.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")
    e.set_defaults(handler=cmd_export)


def cmd_export(args, parser) -> int:
    out = export_run(args.run, args.out, ema=not args.no_ema, log=log)
    log(f"wrote {out}: config.json, model.safetensors, README.md")
    return 0
