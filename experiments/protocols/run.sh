#!/usr/bin/env bash
# Split protocols side by side on the real Gaofen-2 tiles (make experiment-protocols): the same model (DAS²F
# 1-stage), the same seeds and about the same number of training patches under the field's pixel split
# (experiment=gid5_pixels), a block split (experiment=gid5_blocks) and the tile split (experiment=gid5); one
# report with the test overlap of each protocol and the paired differences against the pixel split.
#   SEEDS    training seeds (default 1,2,3); the split itself is drawn with dataset.seed (0)
#   VARIANT  a conf/variant/*.yaml (default das2f_s1)
#   ALSO     earlier sweep dirs (space-separated) whose runs join the report
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-1,2,3}
VARIANT=${VARIANT:-das2f_s1}
read -r -a ALSO_DIRS <<< "${ALSO:-}"
if [ ! -d ../shared/data/gid5 ]; then
  echo "experiments/protocols: ../shared/data/gid5 not found (the Gaofen-2 tiles; see ../shared/data/README.md)" >&2
  exit 2
fi
STAMP=$(date +%Y-%m-%d_%H-%M-%S)
SWEEPS=()
for exp in gid5_pixels gid5_blocks gid5; do
  SWEEP=logs/train/multiruns/protocols_${STAMP}_${exp}
  "$PY" -m das2f.train -m "experiment=$exp" "variant=$VARIANT" "seed=$SEEDS" deterministic=true \
    "hydra.sweep.dir=$SWEEP" "$@"
  SWEEPS+=("$SWEEP")
done
"$PY" -m das2f.report "${ALSO_DIRS[@]}" "${SWEEPS[@]}" --baseline protocol=pixels --out experiments/protocols/results
echo "results: experiments/protocols/results (report.md, report.csv); runs: ${SWEEPS[*]}"
