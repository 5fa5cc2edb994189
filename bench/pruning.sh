#!/bin/bash
# The same Optuna search once per pruner (docs/benchmarks.md, "Optuna search with and without pruning"):
# 24 trials of up to 10 epochs on real Fashion-MNIST, TPE seed 0, one trial at a time; prints each sweep's
# wall time, trials complete/pruned, best val/acc and that trial's test accuracy.
# PRUNERS: the runs, "name" or "name:override,override" (default: none, hyperband, successive_halving).
# SPACE/DATA: narrow the search or the data (e.g. DATA="data.train_fraction=0.25").
# Needs real data under DATA_DIR. Timed runs on a shared machine: flock /tmp/mlplab-measure.lock bench/pruning.sh
set -euo pipefail
B=${B:-logs/bench/pruning}
PY=${PY:-.venv/bin/python}
PRUNERS=${PRUNERS:-"none hyperband successive_halving successive_halving:hydra.sweeper.pruner.min_resource=2,hydra.sweeper.pruner.reduction_factor=3"}
SPACE=${SPACE:-"model.hidden_dims=choice([64],[128],[256],[128,64],[256,128]) data.batch_size=choice(64,128,256)"}
DATA=${DATA:-""}
mkdir -p "$B"
for run in $PRUNERS; do
  name=${run%%:*}; extra=""
  [ "$name" = "$run" ] || extra=${run#*:}
  dir=$B/$(echo "$run" | tr ':,=' '___')
  start=$(date +%s.%N)
  $PY train.py -m hparams_search=mlp_optuna data=fashion_mnist $DATA hydra.sweeper.n_trials=24 trainer.max_epochs=10 \
    trainer.enable_progress_bar=false callbacks.progress_bar=null $SPACE hydra/sweeper/pruner=$name ${extra//,/ } \
    hydra.sweep.dir=$dir > "$dir.log" 2>&1
  end=$(date +%s.%N)
  $PY - "$dir" "$run" "$start" "$end" <<'PY'
import json, sys
from pathlib import Path
sweep, run, start, end = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
status = {p.parent: json.loads(p.read_text())["status"] for p in sweep.glob("*/job.json")}
done = [json.loads((job / "metrics.json").read_text()) for job, s in status.items() if s == "ok"]
pruned = sum(s == "pruned" for s in status.values())
best = max(done, key=lambda m: m["val/acc"])
print(f"| {run} | {end - start:.1f} s | {len(done)} / {pruned} | {best['val/acc']:.4f} | {best['test/acc']:.4f} |")
PY
done
