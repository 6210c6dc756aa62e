"""Quality against steps and time: an NTM run against diffusers' flow-matching schedulers on a
flow-matching run (and the identity-transporter ablation), as ``ntm compare``.

    python bench/compare_samplers.py NTM_RUN --fm FM_RUN [--ablation RUN] [--n 1000] \\
        [--out DIR]                   # writes DIR/quality_vs_steps.{md,png,json}
    python bench/compare_samplers.py --train --dataset colour-patches --minutes 7 --out DIR
                                      # trains DIR/ntm, DIR/fm, DIR/ablation first

Options: ``python bench/compare_samplers.py --help`` (:mod:`ntm_engine.cli.compare`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the source checkout

from ntm_engine.cli.compare import add_compare_arguments, cmd_compare  # noqa: E402
from ntm_engine.cli.common import device_named, log  # noqa: E402
from ntm_engine.cli.compare import load_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="compare_samplers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compare_arguments(parser)
    args = parser.parse_args(argv)
    return cmd_compare(args, parser, load_model=load_model, device_of=device_named, log=log)


if __name__ == "__main__":
    sys.exit(main())
