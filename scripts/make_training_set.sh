#!/usr/bin/env bash
# Generate the canonical training set and the held-out set on ONE core, then announce each with a
# one-line JSON READY_<name> file beside it. Resumable: re-run to continue after an interruption.
# SETS="canonical_xl" grows a copy of canonical (cp -r .cache/sim/canonical .cache/sim/canonical_xl first).
#   nohup scripts/make_training_set.sh > .cache/logs/simulate_canonical.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
ROOT=$(realpath -m "${POLARSTEM_SIM_ROOT:-.cache/sim}")
mkdir -p "$ROOT"
for name in ${SETS:-canonical heldout}; do
  out="$ROOT/$name"
  .venv/bin/python -m polarstem.cli simulate "configs/simulate/$name.yaml" -o "$out" --workers 1
  .venv/bin/python - "$out" "$ROOT/READY_$name" <<'PY'
import json, sys, time
out, ready = sys.argv[1], sys.argv[2]
m = json.load(open(f"{out}/manifest.json"))
if m["status"] == "complete":
    info = {"path": out, "data_file": m["data_file"], "shape": m["shape"], "patterns": m["patterns_done"],
            "chunk_rows": m["chunk_rows"], "mrad_per_px": m["calibration"]["mrad_per_px"],
            "detector_center_px": m["calibration"]["detector_center_px"],
            "arrays": m["arrays"], "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    open(ready, "w").write(json.dumps(info) + "\n")
    print("READY", json.dumps(info))
PY
done
