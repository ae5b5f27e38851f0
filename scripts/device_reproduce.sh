#!/usr/bin/env bash
# Run reproduction sweeps on a remote GPU machine and collect their reports in $OUT/results/.
#
#   bash scripts/device_reproduce.sh JOB [JOB ...]
#
# Each JOB is "OUTNAME:SWEEP:N_JOBS[:override ...]" (overrides separated by spaces inside one
# quoted argument) and runs `python -m sweep sweep=SWEEP trainer=gpu launcher=joblib n_jobs=N_JOBS`
# into /tmp/sweeps/OUTNAME; all JOBs run at the same time on the one GPU. A JOB "train:OUTNAME:..."
# runs a single `python -m train trainer=gpu ...` instead, and "run:NAME:COMMAND" any other command
# (its output in $OUT/NAME.log). Every job is stopped after JOB_S seconds (default 530), so the
# collection below always runs within one 10-minute call. The reports (report.md, results.csv,
# curves.json, plots, command lines) and every run's results.json and metrics.csv are copied to
# results/OUTNAME, packed into $OUT/results.tgz (few files come back from the machine); checkpoints
# stay behind.
#
# The runs share the GPU through NVIDIA's Multi-Process Service where the machine has it (MPS=0
# turns it off): without it the GPU time-slices between the runs' processes, and small models,
# each launching many short kernels, wait on one another. The MPS daemon is stopped on exit.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
OUT=${OUT:-/tmp/out}
RESULTS=/tmp/collected/results
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
date -u +%FT%TZ >> "$OUT/device.txt"

if [[ ${MPS:-1} == 1 ]] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps/log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d && python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    # Runs cut short can leave joblib workers behind, and the daemon waits for its clients to exit.
    trap 'pkill -KILL -f "loky|-m train|-m sweep"; timeout 15 bash -c "echo quit | nvidia-cuda-mps-control"' EXIT
    echo "MPS on" | tee -a "$OUT/device.txt"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS failed to start; runs time-slice the GPU" | tee -a "$OUT/device.txt"
  fi
fi

collect() {
  local name=$1 src=$2 dst=$RESULTS/$1
  mkdir -p "$dst"
  find "$src" -maxdepth 1 -type f \( -name '*.md' -o -name '*.csv' -o -name '*.json' -o -name '*.png' -o -name '*.txt' \) \
    -exec cp {} "$dst"/ \;
  find "$src" -name results.json -o -name metrics.csv -o -name generate.json | while read -r f; do
    rel=${f#"$src"/}; mkdir -p "$dst/$(dirname "$rel")"; cp "$f" "$dst/$rel"
  done
}

pids=()
for job in "$@"; do
  IFS=: read -r kind rest <<<"$job"
  if [[ $kind == run ]]; then
    IFS=: read -r name cmd <<<"$rest"
    ( timeout "${JOB_S:-530}" bash -c "$cmd" >"$OUT/$name.log" 2>&1; echo "exit $?" >>"$OUT/$name.log" ) &
  elif [[ $kind == train ]]; then
    IFS=: read -r name overrides <<<"$rest"
    ( start=$(date +%s)
      # shellcheck disable=SC2086
      timeout "${JOB_S:-530}" python3 -m train trainer=gpu callbacks.progress_bar=none hydra.run.dir=/tmp/sweeps/$name $overrides \
        >"$OUT/$name.log" 2>&1
      echo "exit $? after $(( $(date +%s) - start )) s" >>"$OUT/$name.log"
      collect "$name" /tmp/sweeps/$name ) &
  else
    IFS=: read -r sweep n_jobs overrides <<<"$rest"
    name=$kind
    ( start=$(date +%s)
      # shellcheck disable=SC2086
      timeout "${JOB_S:-530}" python3 -m sweep sweep="$sweep" trainer=gpu launcher=joblib n_jobs="$n_jobs" \
        sweep.out_dir=/tmp/sweeps/$name $overrides >"$OUT/$name.log" 2>&1
      echo "exit $? after $(( $(date +%s) - start )) s" >>"$OUT/$name.log"
      collect "$name" /tmp/sweeps/$name ) &
  fi
  pids+=($!)
done
wait "${pids[@]}"
tar czf "$OUT/results.tgz" -C /tmp/collected results
nvidia-smi --query-gpu=memory.used --format=csv,noheader >>"$OUT/device.txt"
