#!/usr/bin/env bash
# The main job: set up, train a class-conditional NTM on the built-in digits (about 10 minutes
# on 2 CPU cores; a GPU is used when present) on 2, 4 and 8 steps, sample a grid at each,
# distil the model into a light denoiser (3 minutes), and evaluate both samplers.
# Usage: scripts/main.sh [extra `ntm train` options]      (the run goes to runs/digits)
# Env: NTM_RUN (run folder), NTM_DISTILL_MINUTES (distillation budget, default 3; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements.txt
source .venv/bin/activate
RUN=${NTM_RUN:-runs/digits}
DISTILL_MINUTES=${NTM_DISTILL_MINUTES:-3}
ntm train --dataset digits --class-conditional --out "$RUN" --resume "$@"
ntm sample "$RUN" -n 100 --steps all --out "$RUN/samples.png"
if [ "$DISTILL_MINUTES" != "0" ]; then
  ntm distill "$RUN" --out "$RUN/denoiser" --minutes "$DISTILL_MINUTES" --resume
  ntm sample "$RUN" -n 100 --steps all --denoiser "$RUN/denoiser" --out "$RUN/samples_denoised.png"
  ntm eval "$RUN" --denoiser "$RUN/denoiser"
else
  ntm eval "$RUN"
fi
echo "samples: $RUN/samples*_<T>step.png   figures: $RUN/eval.json   metrics: $RUN/metrics.jsonl"
