#!/usr/bin/env bash
# Seconds per stage-1 epoch of `braver train brain` (phantom profile) at two commits, timed
# back to back on this machine, each installed in a virtualenv of its own with its own phantom
# cache: is a slower demo the machine or braver?
#
#     bench/commits.sh 0edfdb8 HEAD            # EPOCHS=3 by default
#     EPOCHS=2 WORK=/tmp/commits bench/commits.sh v0.1.0 main
#     PYTHON=.venv/bin/python bench/commits.sh …   # the Python (and torch version) to use
#
# Prints one JSON line: per commit the seconds of each epoch (history.csv), their mean, and the
# run's wall seconds (phantom generation and whole-volume evaluation included), with the load.
set -euo pipefail
OLD=${1:?usage: bench/commits.sh OLD NEW}
NEW=${2:?usage: bench/commits.sh OLD NEW}
EPOCHS=${EPOCHS:-3}
WORK=${WORK:-$(mktemp -d -t braver-commits-XXXX)}
ROOT=$(git rev-parse --show-toplevel)
PY=${PYTHON:-python3}
# both commits get the torch of this environment (the newest one the index offers may differ)
TORCH=${TORCH:-$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)}
mkdir -p "$WORK"
result="{}"
for ref in "$OLD" "$NEW"; do
  sha=$(git -C "$ROOT" rev-parse --short "$ref")
  tree="$WORK/tree-$sha"; venv="$WORK/venv-$sha"
  if [ ! -d "$tree" ]; then
    mkdir -p "$tree" && git -C "$ROOT" archive "$sha" | tar -x -C "$tree"
  fi
  if [ ! -x "$venv/bin/braver" ]; then
    "$PY" -m venv "$venv"
    "$venv/bin/pip" install -q ${TORCH:+"torch==$TORCH"} "$tree" >"$WORK/pip-$sha.log" 2>&1
  fi
  echo "commit $sha: $EPOCHS epochs" >&2
  start=$(date +%s)
  BRAVER_CACHE="$WORK/cache-$sha" "$venv/bin/braver" train brain \
    --set stage1.epochs="$EPOCHS" --set stage2.epochs=0 --out "$WORK/runs-$sha" \
    >"$WORK/train-$sha.log" 2>&1
  wall=$(( $(date +%s) - start ))
  history=$(ls -t "$WORK"/runs-"$sha"/*/history.csv | head -1)
  result=$("$PY" - "$result" "$sha" "$history" "$wall" <<'EOF'
import csv, json, sys
result, sha, history, wall = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
seconds = [float(row["time"]) for row in csv.DictReader(open(history)) if row["stage"] == "stage1"]
result[sha] = {"epoch_seconds": seconds, "mean_epoch_seconds": round(sum(seconds) / len(seconds), 2),
               "wall_seconds": round(wall, 1)}
print(json.dumps(result))
EOF
)
done
"$PY" - "$result" "$OLD" "$NEW" <<'EOF'
import json, os, sys
result, old, new = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
shas = list(result)
ratio = result[shas[1]]["mean_epoch_seconds"] / result[shas[0]]["mean_epoch_seconds"]
print(json.dumps({"old": old, "new": new, "commits": result, "epoch_ratio_new_over_old": round(ratio, 3),
                  "load_average_end": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count()}))
EOF
