#!/bin/bash
# The same Optuna search once per pruner (docs/benchmarks.md, "Optuna search with and without pruning"):
# 24 trials of up to 10 epochs on real Fashion-MNIST, TPE seeded with `seed` (0; DATA="seed=1" for another),
# one trial at a time; prints each sweep's wall time (and its share of the unpruned run's), trial 0's wall time (a gauge of the VM's speed), trials
# complete/pruned, epochs trained, best val/acc (and its difference from the unpruned run's) and its test accuracy.
# PRUNERS: the runs, "name" or "name:override,override" (default: none, median); run none first.
# SPACE/DATA: change the search (default: conf/hparams_search/mlp_optuna.yaml's) or the data and seed
# (e.g. DATA="data.train_fraction=0.25 seed=1").
# Needs real data under DATA_DIR. Timed runs on a shared machine: flock /tmp/mlplab-measure.lock bench/pruning.sh
set -euo pipefail
B=${B:-logs/bench/pruning}
PY=${PY:-.venv/bin/python}
PRUNERS=${PRUNERS:-"none median"}
SPACE=${SPACE:-""}
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
  $PY - "$dir" "$run" "$start" "$end" "$B/none" <<'PY'
import json, sys
from pathlib import Path
import optuna
sweep, run, start, end, unpruned = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5])
status = {p.parent: json.loads(p.read_text()) for p in sweep.glob("*/job.json")}
done = [json.loads((job / "metrics.json").read_text()) for job, s in status.items() if s["status"] == "ok"]
pruned = sum(s["status"] == "pruned" for s in status.values())
best = max(done, key=lambda m: m["val/acc"])
from mlplab.search.studies import open_storage
study = optuna.load_study(study_name="mlp", storage=open_storage(str(sweep / "optuna.journal")))
epochs = sum(len(t.intermediate_values) for t in study.trials)  # pruned trials' epochs too
wall = end - start
(sweep / "bench.json").write_text(json.dumps({"wall_s": wall, "best_val_acc": best["val/acc"]}))
base = json.loads((unpruned / "bench.json").read_text()) if (unpruned / "bench.json").is_file() else None
share = f"{wall / base['wall_s']:.2f}" if base else "-"
points = f"{100 * (best['val/acc'] - base['best_val_acc']):+.2f}" if base else "-"
print(f"| {run} | {wall:.1f} s | {share} | {status[sweep / '0']['wall_time_s']:.1f} s | {len(done)} / {pruned} "
      f"| {epochs} | {best['val/acc']:.4f} | {points} | {best['test/acc']:.4f} |")
PY
done
