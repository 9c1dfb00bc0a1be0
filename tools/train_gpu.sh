#!/usr/bin/env bash
# Train one or more configs side by side on one GPU, within a wall-clock budget, then pack each
# run's exported models for the trip back to the workstation (which converts and evaluates them).
#
#   tools/train_gpu.sh SECONDS PACK_DIR CONFIG [CONFIG...]
#
# Needs Keras 3 (JAX backend preferred, PyTorch as the fallback; TensorFlow is not needed) and
# FER-2013 at $FER2013_DIR. Each config gets an equal share of GPU memory and trains as many
# epochs as fit in the budget (python -m train --time-budget; each run's config.yaml records the
# number, and reproduces the run without a budget). The shipped models came from:
#   tools/train_gpu.sh 545 $OUT configs/train-default.yaml configs/train-sgd.yaml
#
# A GPU machine without network access needs, beside the repository (about 47 MB in all):
#   .whl/     keras, namex, optree wheels for its Python (pip download --no-deps --only-binary=:all: ...),
#             installed there with pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#   .carry/fer2013.tgz  train/ and test/*/PublicTest_* only (41 MB; PrivateTest stays home):
#     tar czf .carry/fer2013.tgz -C ../shared --exclude='PrivateTest_*' fer2013
# then: tar xzf .carry/fer2013.tgz -C /tmp && FER2013_DIR=/tmp/fer2013 tools/train_gpu.sh ...
set -uo pipefail

started=$(date +%s)
budget=$1 pack=$2
shift 2
mkdir -p "$pack" build

export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# train.config reads its YAML through fer_edge.config.builder (which imports YAML alone); fer_edge is not installed there
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/edge${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
# (ALLOW_CPU=1 runs it on a CPU: a dry run of the whole script with tiny configs)
if ! python3 -c "import os, keras, numpy; assert os.environ.get('ALLOW_CPU') or keras.backend.backend() != 'jax' or __import__('jax').devices()[0].platform == 'gpu'; numpy.asarray(keras.ops.ones(2) + 1)" 2>build/backend.err; then
    echo "Keras on $KERAS_BACKEND failed ($(tail -n 1 build/backend.err)); using the torch backend"
    export KERAS_BACKEND=torch
fi
# JAX takes 75% of the GPU per process by default: share it instead
export XLA_PYTHON_CLIENT_MEM_FRACTION
XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9 / $#, 2))")

# decode the JPEGs once, before parallel runs race to write the same cache
python3 -c "
from train import data
root = data.resolve_data_dir()
for split in ('train', 'public'):
    print(split, len(data.load_split(root, split, 'build/cache')), 'images from', root)
" || exit 1

left=$((budget - ($(date +%s) - started)))
echo "backend $KERAS_BACKEND; $left s left for training $*"
pids=()
for config in "$@"; do
    name=$(basename "$config" .yaml)
    timeout --signal=INT --kill-after=10 $((left + 20)) python3 -m train --config "$config" --time-budget "$left" --no-eval \
        >"$pack/$name.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

# each run: the float32 best.keras (or, if the run was cut short, its best weights) and its records
for config in "$@"; do
    name=$(basename "$config" .yaml)
    python3 - "$config" "build/$name.files" <<'EOF'
import sys
from pathlib import Path
from train.config import load_config
cfg = load_config(sys.argv[1])
files = []
for run_dir in cfg.run_dirs.values():
    model = run_dir / "best.keras" if (run_dir / "best.keras").is_file() else run_dir / "best.weights.h5"
    wanted = [run_dir / f for f in ("history.csv", "config.yaml", "run.json")]
    if model.is_file() and model.stat().st_size < 15e6:  # a wide teacher stays behind: too big to carry
        wanted.append(model)
    files += [str(f) for f in wanted if f.is_file()]
Path(sys.argv[2]).write_text("\n".join(files) + "\n")
EOF
    tar czf "$pack/$name.tgz" -T "build/$name.files"
    grep -h "time budget\|epoch 1/\|Traceback\|Error" "$pack/$name.log" | head -n 5
    tail -n 3 "$pack/$name.log"
done
ls -la "$pack"
echo "done in $(($(date +%s) - started)) s"
exit $status
