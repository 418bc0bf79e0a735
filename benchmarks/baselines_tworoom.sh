#!/bin/bash
# The baseline comparison on TwoRoom at laptop scale (issue 14): one dataset, the `tiny`
# preset's 1,000-step budget for every kind, CEM 300x30 on the same 50 pairs for two pair
# seeds with the random floor beside it, then one table. DINO-WM-style runs twice: with
# proprioception (the paper's TwoRoom model) and without (noprop). About 5 hours on 2 CPU cores,
# most of it the DINO-WM-style CEM evaluations (~67 min each).
#   bash benchmarks/baselines_tworoom.sh [OUT]    (default: baselines)
set -euo pipefail
OUT=${1:-baselines}
DATA=$OUT/tworoom_3000ep_64px_seed0.h5
mkdir -p "$OUT/runs"
[ -f "$DATA" ] || lewm collect tworoom --episodes 3000 --out "$DATA" --resolution 64 --seed 0
declare -A OVERRIDES=(
  [lewm]=""
  [pldm]="model.kind=pldm"
  [lewm_lambda0]="model.sigreg_lambda=0"
  [dinowm_proprio]="model.kind=dinowm model.encoder_size=56"
  [dinowm_noprop]="model.kind=dinowm model.encoder_size=56 model.proprio_embed=0"
)
for name in lewm pldm lewm_lambda0 dinowm_proprio dinowm_noprop; do
  # shellcheck disable=SC2086  # the overrides are separate words
  lewm train --data "$DATA" --out "$OUT/runs/$name" --preset tiny --seed 0 --no-progress \
    ${OVERRIDES[$name]}
  for seed in 42 43; do
    for solver in cem random; do
      lewm eval "$OUT/runs/$name" --seed $seed --solver $solver --episodes 50 --no-progress
    done
  done
done
lewm compare "$OUT"/runs/{lewm,pldm,lewm_lambda0,dinowm_proprio,dinowm_noprop} \
  --out "$OUT/compare"
