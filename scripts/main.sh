#!/usr/bin/env bash
# The main job: set up; pretrain the predictor on the built-in digits as a flow-matching model
# (1000 iterations on 4-level trajectories), train a class-conditional NTM from it on 2, 4 and
# 8 steps (1500 iterations; the paper's recipe; about 8 minutes of training on 2 CPU cores, a
# GPU is used when present), sample a grid at each step count, distil the model into a light
# denoiser (2 minutes), and evaluate both samplers.
# Usage: scripts/main.sh [extra `ntm train` options, given to both stages]   (run: runs/digits)
# Env: NTM_RUN (run folder), NTM_FM_ITERS (flow-matching iterations, default 1000; 0 trains the
#      NTM from scratch), NTM_FM_STEPS (levels per flow-matching trajectory, default 4; 8 take
#      1.6x as long and gain 0.006 bits/dim), NTM_DISTILL_MINUTES (distillation budget, default
#      2; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements.txt
source .venv/bin/activate
RUN=${NTM_RUN:-runs/digits}
FM_ITERS=${NTM_FM_ITERS:-1000}
FM_STEPS=${NTM_FM_STEPS:-4}
DISTILL_MINUTES=${NTM_DISTILL_MINUTES:-2}
INIT=()
if [ "$FM_ITERS" != "0" ]; then
  ntm train --dataset digits --class-conditional --objective flow_matching --iters "$FM_ITERS" \
    --steps "$FM_STEPS" --out "$RUN/fm" --resume "$@"
  INIT=(--init-from "$RUN/fm")
fi
ntm train --dataset digits --class-conditional ${INIT[@]+"${INIT[@]}"} --out "$RUN" --resume "$@"
ntm sample "$RUN" -n 100 --steps all --out "$RUN/samples.png"
if [ "$DISTILL_MINUTES" != "0" ]; then
  ntm distill "$RUN" --out "$RUN/denoiser" --minutes "$DISTILL_MINUTES" --resume
  ntm sample "$RUN" -n 100 --steps all --denoiser "$RUN/denoiser" --out "$RUN/samples_denoised.png"
  ntm eval "$RUN" --denoiser "$RUN/denoiser"
else
  ntm eval "$RUN"
fi
echo "samples: $RUN/samples*_<T>step.png   figures: $RUN/eval.json   metrics: $RUN/metrics.jsonl"
