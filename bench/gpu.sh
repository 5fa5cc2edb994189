#!/usr/bin/env bash
# The GPU benchmark, in one go (docs/benchmarks.md, "GPU run"): the machine, bench/speed.py on the GPU at the
# default recipe's batch 512 and the tutorial's batch 64, the default `python train.py` end to end, then, while
# time is left, `+experiment=tutorial` end to end and speed.py with `--compile`. Prints everything to stdout.
#
#   DATA_DIR=../shared/data bash bench/gpu.sh 2>&1 | tee gpu.log
#
# Settings (environment):
#   DATA_DIR     holds MNIST/raw/<4 IDX files> (required)
#   DATA_GZ      optional: a folder of the 4 IDX files gzipped (<name>.gz); unpacked into $DATA_DIR/MNIST/raw first
#   WHEELS       optional: a folder of wheels (hydra-core, omegaconf, antlr4-python3-runtime) to install with
#                `pip --no-index --no-deps` into $SITE (default /tmp/site), which goes on PYTHONPATH
#   COMMIT       the commit to print (default: `git rev-parse HEAD`; set it for a copy made by `git archive`)
#   PYTHON       interpreter (default python3); DEVICE cuda; TRAINER gpu (conf/trainer/<TRAINER>.yaml)
#   EPOCHS       epochs per speed.py path (default 5: the first apart, median of the other 4)
#   SPEED_ARGS   extra arguments for every speed.py run; TRAIN_ARGS extra overrides for every train.py run
#   OPTIONAL_BY  seconds since start after which the optional steps (tutorial, --compile) are skipped (default 240)
#   STEP_LIMIT   seconds one step may run before `timeout` stops it (default 150)
# A quick check of the script on a CPU:
#   DEVICE=cpu TRAINER=cpu EPOCHS=2 SPEED_ARGS="--paths b,c" \
#     TRAIN_ARGS="trainer.max_epochs=1 data.train_fraction=0.05" DATA_DIR=../shared/data bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
TRAINER=${TRAINER:-gpu}
EPOCHS=${EPOCHS:-5}
OPTIONAL_BY=${OPTIONAL_BY:-240}
STEP_LIMIT=${STEP_LIMIT:-150}
read -r -a SPEED_EXTRA <<<"${SPEED_ARGS:-}"
read -r -a TRAIN_EXTRA <<<"${TRAIN_ARGS:-}"
: "${DATA_DIR:?set DATA_DIR to the folder holding MNIST/raw}"
export DATA_DIR PYTHONUNBUFFERED=1
TIMEFORMAT='wall %R s'
failed=()

if [[ -n ${WHEELS:-} ]]; then
  SITE=${SITE:-/tmp/site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "installing the wheels in $WHEELS failed"; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n ${DATA_GZ:-} ]]; then
  mkdir -p "$DATA_DIR/MNIST/raw"
  for f in "$DATA_GZ"/*.gz; do gunzip -c "$f" >"$DATA_DIR/MNIST/raw/$(basename "$f" .gz)" || exit 1; done
fi

step() {  # step <name> <command...>: runs it under `timeout`, timed; a failure is noted and the script goes on
  local name=$1; shift
  echo; echo "===== $name ($(date -u +%H:%M:%S) UTC, ${SECONDS} s in)"; echo "\$ $*"
  local rc
  time timeout "$STEP_LIMIT" "$@"
  rc=$?
  if ((rc != 0)); then echo "!!!!! $name failed: exit $rc"; failed+=("$name (exit $rc)"); fi
}

optional() {  # optional <name> <command...>: a step, skipped once OPTIONAL_BY seconds have passed
  if ((SECONDS > OPTIONAL_BY)); then echo; echo "===== $1: skipped (${SECONDS} s in, past OPTIONAL_BY=$OPTIONAL_BY)"; return; fi
  step "$@"
}

echo "===== machine ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
fi
grep -m1 'model name' /proc/cpuinfo; echo "cores: $(nproc)"; echo "commit: ${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
"$PY" - <<'EOF'
import sys, platform
from importlib import metadata
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "| cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, f"{p.total_memory / 2**30:.1f} GiB,", p.multi_processor_count, "SMs, capability",
          f"{p.major}.{p.minor}, bf16 supported:", torch.cuda.is_bf16_supported())
for name in ("lightning", "torchvision", "torchmetrics", "hydra-core", "omegaconf", "antlr4-python3-runtime", "numpy"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "(not installed)")
EOF

step "speed.py batch 512" "$PY" bench/speed.py --device "$DEVICE" --batch-size 512 --epochs "$EPOCHS" "${SPEED_EXTRA[@]}"
step "speed.py batch 64" "$PY" bench/speed.py --device "$DEVICE" --batch-size 64 --epochs "$EPOCHS" "${SPEED_EXTRA[@]}"
step "train.py trainer=$TRAINER" "$PY" train.py "trainer=$TRAINER" "${TRAIN_EXTRA[@]}"
optional "train.py trainer=$TRAINER +experiment=tutorial" "$PY" train.py "trainer=$TRAINER" +experiment=tutorial "${TRAIN_EXTRA[@]}"
optional "speed.py batch 512 --compile" "$PY" bench/speed.py --device "$DEVICE" --batch-size 512 --epochs "$EPOCHS" \
  --compile --paths b_fused,c32,c "${SPEED_EXTRA[@]}"

echo; echo "===== done in ${SECONDS} s; failed: ${failed[*]:-none}"
((${#failed[@]} == 0))
