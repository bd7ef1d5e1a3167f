#!/usr/bin/env bash
# The Gaofen-2 experiment end to end (make experiment-gid5): one multirun per group of variants and
# seeds, one report over all of them into experiments/gid5/results/, and held-out tile maps from the
# first DAS²F (1-stage) run.
#   RUNS  space-separated groups VARIANTS:SEEDS, VARIANTS a comma list of conf/variant/*.yaml
#         default: every variant with seeds 1, 2, 3, the table of experiments/gid5/README.md
#         (about 2 hours on 2 CPU cores, then a few minutes of maps)
#   ALSO  earlier sweep dirs (space-separated) whose runs join the report, e.g. when adding seeds later
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-"das2f_s1,cnn,fusion_sum,no_swap,das2f_s2,vmamba:1,2,3"}
read -r -a ALSO_DIRS <<< "${ALSO:-}"
for dir in "${ALSO_DIRS[@]}"; do
  [ -d "$dir" ] || { echo "experiments/gid5: ALSO names $dir, which is not a directory" >&2; exit 2; }
done
if [ ! -d ../shared/data/gid5 ]; then
  echo "experiments/gid5: ../shared/data/gid5 not found (the Gaofen-2 tiles; see ../shared/data/README.md)" >&2
  exit 2
fi
STAMP=$(date +%Y-%m-%d_%H-%M-%S)
RESULTS=experiments/gid5/results
SWEEPS=()
for group in $RUNS; do
  VARIANTS=${group%%:*}
  SEEDS=${group#*:}
  SWEEP=logs/train/multiruns/gid5_${STAMP}_$(echo "$VARIANTS" | tr ',' '+')
  "$PY" -m das2f.train -m experiment=gid5 "variant=$VARIANTS" "seed=$SEEDS" "hydra.sweep.dir=$SWEEP" "$@"
  SWEEPS+=("$SWEEP")
done
"$PY" -m das2f.report "${ALSO_DIRS[@]}" "${SWEEPS[@]}" --out "$RESULTS"
# maps of held-out TEST tiles (two per category) from the first DAS²F 1-stage job of any group
CKPT=$("$PY" - "${SWEEPS[@]}" <<'PYEOF'
import json, sys
from pathlib import Path
jobs = [m for d in sys.argv[1:] for m in sorted(Path(d).glob("*/metrics.json"), key=lambda p: int(p.parent.name))]
for m in jobs:
    r = json.loads(m.read_text())
    if r["backbone"] == "spvm" and r["fusion"] == "aalf" and r["cmda"] == "swap" and r["stages"] == 1:
        print(r["metrics"]["best_checkpoint"]); break
PYEOF
)
MAPS=logs/train/multiruns/gid5_${STAMP}_predict
if [ -n "$CKPT" ]; then
  # the test tiles of the experiment's split, from the same config the runs used
  TILES=$("$PY" - <<'PYEOF'
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from das2f.config import CONF_DIR
from das2f.data.tiles import scene_specs
with initialize_config_dir(CONF_DIR, version_base="1.3"):
    cfg = compose("train", overrides=["experiment=gid5", "paths.root_dir=.", "paths.output_dir=."])
dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
test = [s for s in scene_specs(dataset) if s["split"] == "test"]
cats = sorted({s["category"] for s in test})
picked = [s["name"] for c in cats for s in [t for t in test if t["category"] == c][:2]]
print("[" + ",".join(picked) + "]")
PYEOF
)
  "$PY" -m das2f.predict dataset=gid5 "ckpt_path=$CKPT" "scenes=$TILES" grid_max_scenes=10 \
    "hydra.run.dir=$MAPS"
  cp "$MAPS/maps.png" "$RESULTS/test_tiles_map.png"
  cp "$MAPS/predict.json" "$RESULTS/test_tiles_predict.json"
fi
echo "results: $RESULTS (report.md, report.csv, test_tiles_map.png); runs: ${SWEEPS[*]}"
