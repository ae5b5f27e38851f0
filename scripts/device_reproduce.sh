#!/usr/bin/env bash
# Run reproduction sweeps on a remote GPU machine and collect their reports in $OUT/results.tgz.
# Needs in .whl/ the pure-Python wheels the machine lacks: hydra-core, omegaconf, antlr4,
# flash-linear-attention, and for sweep JOBs hydra-joblib-launcher and joblib.
#
#   bash scripts/device_reproduce.sh JOB [JOB ...]
#
# Each JOB is "OUTNAME:SWEEP:N_JOBS[:override ...]" (overrides separated by spaces inside one
# quoted argument) and runs `python -m sweep sweep=SWEEP trainer=gpu launcher=joblib n_jobs=N_JOBS`
# into /tmp/sweeps/OUTNAME; all JOBs run at the same time on the one GPU. A JOB "train:OUTNAME:..."
# runs a single `python -m train trainer=gpu ...` instead, and "run:NAME:COMMAND" any other command.
# Every job is stopped after JOB_S seconds (default 530), so the collection below always runs
# within one 10-minute call. The reports (report.md, results.csv, curves.json, plots, command
# lines), every run's results.json and metrics.csv, and the jobs' logs are copied to
# results/OUTNAME and logs/, packed into $OUT/results.tgz (few files come back from the machine).
#
# Single runs ("train:" JOBs):
#   COMPILE=MODE   train with compile=MODE first; a run that fails (not one stopped by the time
#                  limit) is started again uncompiled in the time left.
#   CKPT=1         also pack each run's checkpoints and metrics.csv into $OUT/ckpt.tgz.part-*
#                  (15 MiB pieces), to continue the runs in a later call.
#   RESUME=DIR     a run whose DIR/OUTNAME/checkpoints/last.ckpt exists continues from it
#                  (DIR holds what `cat ckpt.tgz.part-* | tar xz` unpacked); its trainer.max_time
#                  must then cover the time both calls trained. RESUME=/tmp/sweeps continues
#                  the runs of an earlier call on the same machine, if it is still warm.
#
# The runs share the GPU through NVIDIA's Multi-Process Service where the machine has it (MPS=0
# turns it off): without it the GPU time-slices between the runs' processes, and small models,
# each launching many short kernels, wait on one another. The MPS daemon is stopped on exit.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
for job in "$@"; do
  [[ $job == train:* || $job == run:* ]] && continue
  python3 -c "import joblib, hydra_plugins.hydra_joblib_launcher" 2>/dev/null && break
  echo "sweep jobs need the joblib launcher: pip download --no-deps -d .whl hydra-joblib-launcher==1.2.0 joblib" >&2
  exit 1
done
OUT=${OUT:-/tmp/out}
RESULTS=/tmp/collected/results LOGS=/tmp/collected/logs
mkdir -p "$RESULTS" "$LOGS"
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

train() {
  local name=$1 overrides=$2 dir=/tmp/sweeps/$1 start limit status
  start=$(date +%s) limit=${JOB_S:-530}
  if [[ -n ${RESUME:-} && -f $RESUME/$name/checkpoints/last.ckpt ]]; then
    # RESUME=/tmp/sweeps continues the runs a previous call left on the same (still warm) machine.
    [[ $RESUME/$name -ef $dir ]] || { mkdir -p "$dir" && cp -r "$RESUME/$name/." "$dir/"; }
    overrides="$overrides ckpt_path=$dir/checkpoints/last.ckpt"
  fi
  local compile=${COMPILE:-false}
  while true; do
    # shellcheck disable=SC2086
    timeout "$limit" python3 -m train trainer=gpu callbacks.progress_bar=none hydra.run.dir="$dir" \
      compile="$compile" $overrides >>"$LOGS/$name.log" 2>&1
    status=$?
    echo "exit $status after $(( $(date +%s) - start )) s (compile=$compile)" >>"$LOGS/$name.log"
    limit=$(( ${JOB_S:-530} - ($(date +%s) - start) ))
    [[ $status != 0 && $status != 124 && $compile != false && $limit -gt 60 ]] || break
    compile=false
    [[ $overrides == *ckpt_path=* ]] || rm -rf "$dir"
  done
  collect "$name" "$dir"
  if [[ ${CKPT:-0} == 1 ]]; then
    mkdir -p "/tmp/ckpt/$name"
    cp -r "$dir/checkpoints" "/tmp/ckpt/$name/" 2>/dev/null
    cp "$dir/metrics.csv" "/tmp/ckpt/$name/" 2>/dev/null
  fi
}

pids=()
for job in "$@"; do
  IFS=: read -r kind rest <<<"$job"
  if [[ $kind == run ]]; then
    IFS=: read -r name cmd <<<"$rest"
    ( timeout "${JOB_S:-530}" bash -c "$cmd" >"$LOGS/$name.log" 2>&1; echo "exit $?" >>"$LOGS/$name.log" ) &
  elif [[ $kind == train ]]; then
    IFS=: read -r name overrides <<<"$rest"
    train "$name" "$overrides" &
  else
    IFS=: read -r sweep n_jobs overrides <<<"$rest"
    name=$kind
    ( start=$(date +%s)
      # shellcheck disable=SC2086
      timeout "${JOB_S:-530}" python3 -m sweep sweep="$sweep" trainer=gpu launcher=joblib n_jobs="$n_jobs" \
        sweep.out_dir=/tmp/sweeps/$name $overrides >"$LOGS/$name.log" 2>&1
      echo "exit $? after $(( $(date +%s) - start )) s" >>"$LOGS/$name.log"
      collect "$name" /tmp/sweeps/$name ) &
  fi
  pids+=($!)
done
wait "${pids[@]}"
for log in "$LOGS"/*.log; do echo "== $(basename "$log")"; tail -n 4 "$log"; done
tar czf "$OUT/results.tgz" -C /tmp/collected results logs
if [[ -d /tmp/ckpt ]]; then
  tar czf - -C /tmp/ckpt . | split -b 15m - "$OUT/ckpt.tgz.part-"
fi
nvidia-smi --query-gpu=memory.used --format=csv,noheader >>"$OUT/device.txt"
