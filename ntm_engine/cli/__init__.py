"""The ``ntm`` command line (also ``python -m ntm_engine``); one module per subcommand.

    ntm train   [--dataset D] [--class-conditional] [model/optimisation options] --out RUN
                [--resume] [--objective ntm|flow_matching] [--init-from FM_RUN [--fm-reg L]]
    ntm sample  RUN [-n N] [--labels 0,1|all|none] [--steps S] [--guidance W] [--denoiser DIR]
    ntm eval    RUN [--n-samples N] [--guidance W] [--classifier PATH] [--denoiser DIR]
    ntm distill RUN [--out DIR] [--t-min T] [--iters N] [--minutes M] [--resume]
    ntm compare RUN --fm FM_RUN [--ablation RUN] [--n N] [--steps 1,2,4] [--out DIR]
    ntm compare --train --dataset D [--iters N] [--minutes M] [--train-options "..."] [--out DIR]
    ntm export  RUN DIR [--no-ema]          (a pretrained folder: NTM.from_pretrained(DIR))
    ntm score   RUN [--dataset D] [--bpd-samples K] [--out scores.csv]   (bits/dim per image)
    ntm --version

Latents (``--dataset latents.npz`` with a ``latents`` array, ``--decoder MODULE:FUNCTION``):
likelihoods in nats per latent dimension, sample grids through the decoder (README).

Flow-matching pretraining and the NTM started from it, and self-distillation: see
``docs/design.md`` section 1 and the README.  Errors in the configuration are reported before
any work starts (exit status 2 for argument errors, 1 for everything else, with a message that
says what to change).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .. import __version__, logs
from ..checkpoint import CheckpointError
from ..training import ConfigError
from ..training.errors import OptionError
from . import compare, distill, evaluate, export, sample, score, train

SUBCOMMANDS = (train, sample, evaluate, distill, compare, export, score)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ntm", description="Train, sample and evaluate Normalizing Trajectory Models.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{train,sample,eval,distill,compare,export,score}")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    logs.cli_handler()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args, parser)
    except OptionError as e:   # a bad option value: one line, status 2 (as argparse's)
        print(f"ntm {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except (ConfigError, CheckpointError) as e:
        raise SystemExit(f"ntm {args.command}: error: {e}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
