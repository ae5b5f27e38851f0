#!/usr/bin/env bash
# One round of GPU checks and measurements on the lent device, in one call:
#   the pure-Python wheels it lacks (carried in .whl/), every layer's device path against its
#   float64 reference, the GPU tests, and the training-speed benchmark. Results land in $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, lightning, hydra; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
python3 -m pytest -q -m gpu tests/test_gpu.py -x -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.log"
python3 benchmarks/train_speed.py --out "$OUT/train_speed.json" ${SPEED_VARIANTS:-} 2>&1 | tee "$OUT/train_speed.log"
