#!/bin/bash
# The README's "Your own digits" walk-through, end to end: train on MNIST, predict digits drawn differently
# (bench/font_digits.py), fine-tune on N = 5, 20, 100 of them per class (seeds 0 and 1), predict again.
# SCRATCH=1 also trains the same subsets from scratch, for comparison.
# Needs real MNIST under DATA_DIR. Timed runs on a shared machine: flock /tmp/mlplab-measure.lock bench/own_digits.sh
set -euo pipefail
B=${B:-logs/own_digits}
DIGITS=${DIGITS:-$B/font_digits}
PY=${PY:-.venv/bin/python}
[ -d "$DIGITS" ] || $PY bench/font_digits.py "$DIGITS"
[ -f "$B/mnist/checkpoints/last.ckpt" ] || $PY train.py hydra.run.dir=$B/mnist
CKPT=$B/mnist/checkpoints/last.ckpt
$PY eval.py ckpt_path=$CKPT data=image_folder data.root=$DIGITS hydra.run.dir=$B/before
$PY predict.py ckpt_path=$CKPT inputs=$DIGITS/test/7 hydra.run.dir=$B/predict-before
FEW="data=image_folder data.root=$DIGITS trainer.max_epochs=30 data.batch_size=32 callbacks.early_stopping=null"
for N in 5 20 100; do
  $PY finetune.py -m pretrained=$CKPT $FEW data.samples_per_class=$N seed=0,1 hydra.sweep.dir=$B/ft$N
  [ -z "${SCRATCH:-}" ] || $PY train.py -m $FEW data.samples_per_class=$N seed=0,1 hydra.sweep.dir=$B/scratch$N
done
$PY predict.py ckpt_path=$B/ft20/0/checkpoints/last.ckpt inputs=$DIGITS/test/7 hydra.run.dir=$B/predict-after
$PY - "$B" <<'PY'
import json, sys
from pathlib import Path
b = Path(sys.argv[1])
print("before:", json.loads((b / "before" / "metrics.json").read_text())["test/acc"])
for n in (5, 20, 100):
    for arm in ("ft", "scratch"):
        if not (b / f"{arm}{n}").is_dir():
            continue
        runs = [json.loads((b / f"{arm}{n}" / str(s) / "metrics.json").read_text()) for s in (0, 1)]
        print(arm, n, [round(r["test/acc"], 4) for r in runs], [round(r.get("pretrained_test_acc", 0), 4) for r in runs])
PY
