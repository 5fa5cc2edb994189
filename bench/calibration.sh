#!/bin/bash
# Calibration, reject option and out-of-distribution figures of docs/benchmarks.md on real data: train the default
# recipe on MNIST and on Fashion-MNIST, then eval.py on each test set (calibration error before/after the stored
# temperature, the reject table) with ood= Fashion-MNIST, the kit's font digits (bench/font_digits.py) and MNIST;
# then bench/int8.py on the MNIST model. Needs real MNIST and FashionMNIST under DATA_DIR.
# Timed runs on a shared machine: flock /tmp/mlplab-measure.lock bench/calibration.sh
set -euo pipefail
B=${B:-logs/calibration}
DIGITS=${DIGITS:-$B/font_digits}
PY=${PY:-.venv/bin/python}
QUIET="trainer.enable_progress_bar=false callbacks.progress_bar=null"
[ -d "$DIGITS" ] || $PY bench/font_digits.py "$DIGITS" --train 0 --test 100
for D in mnist fashion_mnist; do
  [ -f "$B/$D/metrics.json" ] || $PY train.py data=$D $QUIET hydra.run.dir=$B/$D
done
MNIST=$B/mnist/checkpoints/last.ckpt
$PY eval.py ckpt_path=$MNIST ood=fashion_mnist hydra.run.dir=$B/eval-mnist-vs-fashion
$PY eval.py ckpt_path=$MNIST ood=$DIGITS/test hydra.run.dir=$B/eval-mnist-vs-font-digits
$PY eval.py ckpt_path=$B/fashion_mnist/checkpoints/last.ckpt ood=mnist hydra.run.dir=$B/eval-fashion-vs-mnist
$PY predict.py ckpt_path=$MNIST inputs=$DIGITS/test/7 reject_below=0.9 hydra.run.dir=$B/predict-font-7
$PY bench/int8.py $MNIST --out $B/int8
