#!/usr/bin/env bash
# Three speed levers on one H200 (or H100): the bf16 residual stream, the micro-batch sweep, the seed profile's
# memory gap.
# Three steps, each sized for one device call (estimates on an H200; every new shape compiles afresh,
# ~40-75 s per impl and size, which is most of the time):
#   1  (~7 min) bench_seed.csv (hf_eager, hf_compile, ours_fast_accum, ours_fast, ours_fast_bf16res, ours_fast_blocks) and
#      bench_throughput.csv at micro-batch 16 (hf_eager, ours_eager, ours_fast, ours_fast_bf16res) with the kernel
#      table of ours_fast vs ours_fast_bf16res (time_breakdown_throughput.csv, kernels_throughput_*.txt)
#   2  (~8-9 min) microbatch_sweep.csv: hf_compile and ours_fast_bf16res (the default path) at 16, 24, 32, 48
#      (SWEEP_IMPLS=one of them: half the time; the sweep file keeps the other's rows); their fastest
#      size that fit replaces their row in bench_throughput.csv (rows from another card are dropped)
#   3  (~3 min) loss_residual.*: 200 steps at seq 2048 x 16, residual fp32 vs bf16 (+ the fp32 run again as
#      the run-to-run yardstick); then benchmarks/probe_quack.py if quack-kernels is importable
# Usage: bash benchmarks/device_speed_levers.sh 1   (then 2, then 3; no argument: all three, ~18 min)
# Carry [".assets"] (tokenizer.json and input.txt, as for device_bench.sh). Results go to results/bench/ (BENCH_OUT)
# and, packed, to $OUT/speed_levers_step_<step>.tgz.
set -u
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
step=${1:-all}
run() { [ "$step" = all ] || [ "$step" = "$1" ]; }
B=${BENCH_OUT:-results/bench}
RUNS=${RUNS:-/tmp/smollm2_runs}
mkdir -p "$B" "$RUNS"
t0=$SECONDS
say() { echo "== [$((SECONDS - t0)) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if run 1; then
  say "1/3 seed profile: residual fp32 vs bf16, accumulated vs stacked (memory gap), transformers"
  python bench.py --profile seed --impls hf_eager,hf_compile,ours_fast_accum,ours_fast,ours_fast_bf16res,ours_fast_blocks \
    --warmup 5 --steps 20 --input_file input.txt --out_dir "$B"
  say "1/3 throughput profile at micro-batch 16 with the kernel table: residual fp32 vs bf16"
  python bench.py --profile throughput --impls hf_eager,ours_eager,ours_fast,ours_fast_bf16res --kernel_table 1 \
    --warmup 5 --steps 15 --input_file input.txt --out_dir "$B"
fi
if run 2; then
  sweep=${SWEEP_IMPLS:-hf_compile,ours_fast_bf16res}  # one impl a call fits the 10-minute limit with room
  say "2/3 micro-batch sweep at seq 2048: $sweep at 16, 24, 32, 48"
  python bench.py --profile throughput --impls "$sweep" --micro_batches 16,24,32,48 \
    --warmup 4 --steps 8 --input_file input.txt --out_dir "$B"
fi
if run 3; then
  say "3/3 loss curves, residual stream fp32 vs bf16, 200 steps at seq 2048 x 16"
  python bench.py --profile none --residual_loss_steps 200 --input_file input.txt --out_dir "$B"
  say "3/3 quack-kernels probe (one line and on if it is not installed)"
  python benchmarks/probe_quack.py --out "$B"/probe_quack.json
fi
say "done"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/speed_levers_step_$step.tgz" --exclude=.cache "$B"/*.csv "$B"/*.json "$B"/*.png "$B"/*.txt 2>/dev/null
  cp "$B"/microbatch_sweep.csv "$B"/bench_seed.csv "$B"/bench_throughput.csv "$B"/loss_residual.json "$OUT"/ 2>/dev/null
  say "packed into $OUT"
fi
