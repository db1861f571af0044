#!/usr/bin/env bash
# The seed's commands end to end on the device machine (.assets/ carried: input.txt, tokenizer.json): the README's two commands
# as written, end to end, cold and warm. Pass the steps (default: all, about 5 minutes on an H100/H200; if one
# 10-minute call is too short, run `cold` in one call and `warm portable` in the next on the same machine):
#   cold      empty the machine's compile caches and the run folder, then step A and step B
#   warm      empty the run folder only (the compile caches stay: a machine that has run it before), then
#             step A and step B; this pair's train.log is the graded log
#   portable  the machine's caches emptied again, step B's resume on a copy of the warm run's folder: what
#             <out_dir>/cache/compile_artifacts.bin alone buys a resume on a fresh machine
#   scopes    (about 4 minutes) the compile scopes side by side on short runs of the seed's shape: for each of
#             --compile_scope model and blocks, from empty compile caches, 300 steps cold, 300 again warm,
#             then a resume to 350; each run's WALL line goes to $OUT/scopes_wall.jsonl
# What comes back in $OUT: seed_e2e.csv (each command's wall time as the shell saw it), the cold pair's log
# (cold/train.log), the graded log (out_smollm2_scratch/train.log, to commit as is) and the portable log. The rest is
# committed in results/bench/seed_e2e/: seed_e2e.csv, scopes_wall.jsonl, cache_sizes.txt, and the cold and portable
# logs as train_cold.log and train_portable.log.
set -u
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
steps=" ${*:-all} "  # one or more of: cold warm portable (in that order), or all
run() { [[ "$steps" == *" all "* || "$steps" == *" $1 "* ]]; }
OUT=${OUT:-/tmp/seed_e2e_out}
mkdir -p "$OUT"
CSV="$OUT/seed_e2e.csv"
[ -f "$CSV" ] || echo "case,command,wall_s,exit_status,card,torch" > "$CSV"
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
TORCH=$(python -c "import torch; print(torch.__version__)")
# Where inductor keeps its FX-graph, AOTAutograd and Triton caches on this machine: $TORCHINDUCTOR_CACHE_DIR
# if set, else /tmp/torchinductor_$USER. Triton's own cache (~/.triton/cache) is emptied too for "cold".
INDUCTOR=$(python -c "from torch._inductor.runtime.cache_dir_utils import cache_dir; print(cache_dir())" 2>/dev/null \
  || echo "/tmp/torchinductor_$(whoami)")
A=(--input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 --max_steps 5000 --resume 0 --log_every 50 --save_every 250 --sample_every 500)
B=(--input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 --max_steps 5050 --resume 1 --log_every 50 --save_every 250 --sample_every 500)
timed() {  # case, then the train.py arguments
  local name=$1; shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  python train.py "$@"
  rc=$?
  t1=$(date +%s.%N)
  echo "$name,train.py $*,$(python -c "print(f'{$t1 - $t0:.1f}')"),$rc,$CARD,$TORCH" >> "$CSV"
  echo "== $name: exit $rc, $(python -c "print(f'{$t1 - $t0:.1f}')") s"
}
clean_run_folder() { rm -rf out_smollm2_scratch/checkpoints out_smollm2_scratch/cache out_smollm2_scratch/train.log \
  out_smollm2_scratch/run.json; }
empty_compile_caches() { rm -rf "$INDUCTOR" "$HOME/.triton/cache" "$PYTHONPYCACHEPREFIX"; }  # and the bytecode

if [[ "$steps" == *" scopes "* ]]; then  # not part of "all"
  S=(--input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 --log_every 50 --save_every 250 --sample_every 100)
  for scope in model blocks; do
    empty_compile_caches
    for case in cold warm resume; do
      d=/tmp/scope_$scope; [ $case = resume ] || rm -rf $d
      if [ $case = resume ]; then extra=(--max_steps 350 --resume 1); else extra=(--max_steps 300 --resume 0); fi
      timed "scope_${scope}_$case" "${S[@]}" "${extra[@]}" --compile_scope $scope --out_dir $d > /tmp/scope.log 2>&1
      grep -E "^step +300/|^step +350/" /tmp/scope.log | grep "ms/step"
      python -c "import json,sys; w=json.loads(open('$d/train.log').read().rsplit('WALL: ',1)[1].splitlines()[0]); \
print(json.dumps({'case': '${scope}_$case', **w}))" | tee -a "$OUT/scopes_wall.jsonl"
    done
  done
fi
if run cold; then
  empty_compile_caches
  clean_run_folder
  timed cold_A "${A[@]}"
  timed cold_B "${B[@]}"
  mkdir -p "$OUT/cold" && cp out_smollm2_scratch/train.log "$OUT/cold/train.log"
fi
if run warm; then
  clean_run_folder
  timed warm_A "${A[@]}"
  timed warm_B "${B[@]}"
  mkdir -p "$OUT/out_smollm2_scratch" && cp out_smollm2_scratch/train.log "$OUT/out_smollm2_scratch/train.log"
  du -sh "$INDUCTOR" out_smollm2_scratch/cache/compile_artifacts.bin 2>/dev/null | tee "$OUT/cache_sizes.txt"
fi
if run portable; then
  rm -rf /tmp/seed_e2e_portable && mkdir -p /tmp/seed_e2e_portable
  cp -r out_smollm2_scratch/checkpoints out_smollm2_scratch/cache out_smollm2_scratch/run.json /tmp/seed_e2e_portable/
  P=/tmp/seed_e2e_portable/checkpoints  # back to step 5000, so that step B has its 50 steps to run
  rm -f "$P"/checkpoint_step_5050.pt && ln -f "$P"/checkpoint_step_5000.pt "$P"/checkpoint_latest.pt
  empty_compile_caches
  timed portable_B "${B[@]}" --out_dir /tmp/seed_e2e_portable
  mkdir -p "$OUT/portable" && cp /tmp/seed_e2e_portable/train.log "$OUT/portable/train.log"
fi
cat "$CSV"
