#!/usr/bin/env bash
# Full-scene prediction on the real WorldView-2 pair (make experiment-wv2) with a model trained on the
# synthetic default (the main job): the real-sensor path end to end (.mat input, uint16 11-bit DN,
# 4 of 8 bands, a 1280x1280 PAN / 320x320 MS map) and its wall time.
#   CKPT  a checkpoint to use (default: the best checkpoint of the newest main job; trained first if none)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
if [ ! -f ../shared/data/wv2/imgWV2.mat ]; then
  echo "experiments/wv2: ../shared/data/wv2/imgWV2.mat not found (see ../shared/data/README.md)" >&2
  exit 2
fi
latest_main() {
  "$PY" - <<'PYEOF'
import json
from pathlib import Path
runs = sorted(Path("logs/train/runs").glob("synthetic_*/metrics.json"), key=lambda p: p.stat().st_mtime)
for m in reversed(runs):
    r = json.loads(m.read_text())
    ckpt = r["metrics"].get("best_checkpoint")
    if r["stages"] == 1 and r["backbone"] == "spvm" and r["fusion"] == "aalf" and ckpt and Path(ckpt).is_file():
        from das2f.checkpoint import load_checkpoint
        from das2f.runtime.errors import UserError
        try:
            load_checkpoint(ckpt)
        except UserError:
            continue
        print(ckpt); break
PYEOF
}
CKPT=${CKPT:-$(latest_main)}
if [ -z "$CKPT" ]; then
  echo "no main-job checkpoint yet: training it (make train)"
  "$PY" -m das2f.train dataset=synthetic
  CKPT=$(latest_main)
fi
OUT=logs/predict/wv2_$(date +%Y-%m-%d_%H-%M-%S)
# stats=scene: the checkpoint's statistics describe the synthetic sensor, not WorldView-2 DN
"$PY" -m das2f.predict dataset=wv2 "ckpt_path=$CKPT" stats=scene "hydra.run.dir=$OUT" "$@"
cp "$OUT/wv2_map.png" experiments/wv2/results/wv2_map.png
"$PY" - "$OUT/predict.json" "$CKPT" > experiments/wv2/results/predict.json <<'PYEOF'
import json, platform, os, sys, datetime, torch
s = json.load(open(sys.argv[1]))
s["checkpoint"] = os.path.relpath(sys.argv[2])
s["date"] = f"{datetime.date.today()}"
s["machine"] = {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
for e in s["scenes"].values():
    e["map"] = os.path.basename(e["map"])
print(json.dumps(s, indent=2))
PYEOF
echo "results: experiments/wv2/results (wv2_map.png, predict.json); full outputs: $OUT"
