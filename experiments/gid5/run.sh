#!/usr/bin/env bash
# The Gaofen-2 experiment end to end (make experiment-gid5): one multirun per group of variants and
# seeds, one report over all of them into experiments/gid5/results/, and held-out tile maps from the
# first DAS²F (1-stage) run.
#   RUNS  space-separated groups VARIANTS:SEEDS, VARIANTS a comma list of conf/variant/*.yaml
#         default: every variant with seeds 1, 2, 3, the table of experiments/gid5/README.md
#         (about 2 hours on 2 CPU cores, then a few minutes of maps)
#   ALSO  earlier sweep dirs (space-separated) whose runs join the report, e.g. when adding seeds later
#   CKPT  a DAS²F checkpoint of this experiment: no training and no report, only the maps of the held-out
#         tiles from it (full, and a stride-2 preview with its agreement with the full maps)
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
if [ -z "${CKPT:-}" ]; then
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
fi
MAPS=logs/predict/gid5_${STAMP}
if [ -n "$CKPT" ]; then
  # the test tiles of the experiment's split, from the same config the runs used
  TILES=$("$PY" - <<'PYEOF'
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from das2f.runtime.config import CONF_DIR
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
  # the stride-2 preview of the same tiles (4x fewer forward passes), and how far it agrees with the full maps
  "$PY" -m das2f.predict dataset=gid5 "ckpt_path=$CKPT" "scenes=$TILES" grid_max_scenes=10 stride=2 \
    "hydra.run.dir=${MAPS}_stride2"
  "$PY" - "$MAPS" "${MAPS}_stride2" > "$RESULTS/test_tiles_preview.json" <<'PYEOF'
import json, sys
from pathlib import Path
import numpy as np
full_dir, preview_dir = map(Path, sys.argv[1:])
full, preview = (json.loads((d / "predict.json").read_text())["scenes"] for d in (full_dir, preview_dir))
tiles, same_px, all_px = {}, 0, 0
for name, f in full.items():
    a, b = np.load(full_dir / f"{name}_map.npy"), np.load(preview_dir / f"{name}_map.npy")
    p = preview[name]
    tiles[name] = {"agreement": float((a == b).mean()), "oa_full": f.get("oa"), "oa_preview": p.get("oa"),
                   "seconds_full": f["seconds"], "seconds_preview": p["seconds"]}
    same_px, all_px = same_px + int((a == b).sum()), all_px + a.size
seconds = [sum(t[k] for t in tiles.values()) for k in ("seconds_full", "seconds_preview")]
print(json.dumps({"stride": 2, "agreement": same_px / all_px, "seconds_full": round(seconds[0], 1),
                  "seconds_preview": round(seconds[1], 1), "tiles": tiles}, indent=2))
PYEOF
fi
echo "results: $RESULTS (report.md, report.csv, test_tiles_map.png); runs: ${SWEEPS[*]}"
