#!/usr/bin/env bash
# The main job: set up, train a class-conditional NTM on the built-in digits (about 10 minutes
# on 2 CPU cores; a GPU is used when present), sample a grid in four steps, and evaluate.
# Usage: scripts/main.sh [extra `ntm train` options]      (the run goes to runs/digits)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements.txt
source .venv/bin/activate
RUN=${NTM_RUN:-runs/digits}
ntm train --dataset digits --class-conditional --out "$RUN" --resume "$@"
ntm sample "$RUN" -n 100 --steps 4 --out "$RUN/samples_4step.png"
ntm eval "$RUN"
echo "samples: $RUN/samples_4step.png   figures: $RUN/eval.json   metrics: $RUN/metrics.jsonl"
