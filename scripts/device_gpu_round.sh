#!/usr/bin/env bash
# One round of GPU checks and measurements on a remote GPU machine, in one call (about 10 minutes):
#   1. every layer's device path against its float64 reference (fp32 and bf16), then the
#      flash-linear-attention kernels with impl=fla at d_model 256 (first calls compile for minutes);
#   2. forward + backward timings of the layers with a fast path, fast path vs reference, at
#      sequence 2048, d_model 256, bf16;
#   3. the training speed of the seed-000 MQAR recipe (default, and CUDA graphs over 3,000 steps).
# Each step has its own time limit (CHECK_S, LAYERS_S, SPEED_S seconds) and writes its JSON as it
# goes, so a step cut short keeps what it measured. Results land in $OUT. Needs the pure-Python
# wheels the machine lacks in .whl/ (hydra-core, omegaconf, antlr4, flash-linear-attention).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, triton, lightning; print('torch', torch.__version__, 'triton', triton.__version__, 'lightning', lightning.__version__)"
timeout "${CHECK_S:-300}" python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
timeout "${LAYERS_S:-150}" python3 benchmarks/layers.py --device cuda --seq 2048 --d-model 256 --batch 8 \
  --layers attention sliding_window_attention lru gilr mamba rwkv based rebased linear_attention deltanet \
  --out "$OUT/layers_cuda_2048.json" 2>&1 | tee "$OUT/layers.log"
timeout "${SPEED_S:-180}" python3 benchmarks/train_speed.py --variants base cuda_graphs --steps 3000 \
  --out "$OUT/train_speed.json" 2>&1 | tee "$OUT/train_speed.log"
