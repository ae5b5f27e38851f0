#!/usr/bin/env bash
# One round of GPU checks and measurements on a remote GPU machine, in one call (about 9 minutes),
# the GPU otherwise idle:
#   1. the fast paths still to be checked against their float64 references (fp32 and bf16):
#      FlexAttention (sliding-window attention, impl=flex), and the flash-linear-attention kernels
#      with impl=fla at d_model 256 (GLA, RetNet, Mamba-2, DeltaNet); their first calls compile and
#      autotune for minutes, which also fills Triton's cache for step 2;
#   2. forward + backward timings of those layers, fast path vs reference, at sequence 2048,
#      d_model 256, bf16 (LAYERS: another list of layers to time);
#   3. the training speed of the seed-000 MQAR recipe, default and with CUDA graphs, each sustained
#      over 2,000 steps.
# Each step has its own time limit (CHECK_S, LAYERS_S, SPEED_S seconds); the check writes its
# JSON as it goes and every step tees its table to a log, so a step cut short keeps what it
# measured. Results land in $OUT. Needs the pure-Python wheels the machine lacks in .whl/
# (hydra-core, omegaconf, antlr4, flash-linear-attention).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, triton, lightning; print('torch', torch.__version__, 'triton', triton.__version__, 'lightning', lightning.__version__)"
timeout "${CHECK_S:-240}" python3 benchmarks/gpu_check.py --layers sliding_window_attention gla retnet mamba2 deltanet \
  --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
timeout "${LAYERS_S:-160}" python3 benchmarks/layers.py --device cuda --seq 2048 --d-model 256 --batch 8 \
  --layers ${LAYERS:-sliding_window_attention deltanet gla retnet mamba2} \
  --out "$OUT/layers_cuda_2048.json" 2>&1 | tee "$OUT/layers.log"
timeout "${SPEED_S:-150}" python3 benchmarks/train_speed.py --variants base cuda_graphs \
  --steps 2000 --out "$OUT/train_speed.json" 2>&1 | tee "$OUT/train_speed.log"
