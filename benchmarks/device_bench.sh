#!/usr/bin/env bash
# The single-GPU runs behind results/bench/bench_*.csv, the loss-equivalence plot, the kernel table and the
# memory and max-batch probes. Each step fits one 10-minute device call; pass the step (1, 2, 3,
# 4a, 4b, 4c, 5; default: all). Diagnostics go to $RUNS/diag (default /tmp/smollm2_runs, not committed); the
# tables go to results/bench/.
# First, on torch 2.11 there: python -m pytest -q tests/test_model.py -k "compiled_equals_eager or fused"
set -u
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
step=${1:-all}
run() { [ "$step" = all ] || [ "$step" = "$1" ]; }
RUNS=${RUNS:-/tmp/smollm2_runs}
mkdir -p "$RUNS"/diag
# the tables' folder: results/bench/ by default. A run driven in the background across device calls sets
# BENCH_OUT to a folder outside the checkout: each call re-copies the working tree over results/bench/ and
# deletes the folders that .git/info/exclude ignores.
B=${BENCH_OUT:-results/bench}
# 1-2. ours vs transformers, both profiles, one process each (every row of a table from one run, one card)
run 1 && python bench.py --profile seed --input_file input.txt --out_dir "$B"
# 2. (~9 min: five impls, then the loss comparison: float32 reference, bf16 eager, fast path, 200 steps each)
run 2 && python bench.py --profile throughput --input_file input.txt --loss_steps 200 --out_dir "$B"
# 3. where the time goes (kernel groups + top kernels), then what is alive at the seed profile's memory peak
#    (ours_eager attributes allocations line by line; compiled ones collapse into the step; recording slows
#    the steps, so take no timings from $RUNS/diag/bench_seed.csv)
run 3 && python bench.py --profile throughput --impls ours_compile --kernel_table 1 --warmup 10 --steps 20 \
  --input_file input.txt --out_dir "$RUNS"/diag
run 3 && python bench.py --profile seed --impls hf_eager,ours_eager,ours_compile,ours_fast --memory_peak 1 \
  --warmup 5 --steps 5 --input_file input.txt --out_dir "$RUNS"/diag
# 4a-4c. the largest micro-batch at seq 2048, one impl per call (compiled ones recompile at every size)
run 4a && python bench.py --profile none --max_batch_probe 1 --probe_impls hf_eager --input_file input.txt --out_dir "$B"
run 4b && python bench.py --profile none --max_batch_probe 1 --probe_impls hf_compile --input_file input.txt --out_dir "$B"
run 4c && python bench.py --profile none --max_batch_probe 1 --probe_impls ours_compile --input_file input.txt --out_dir "$B"
# 5. micro-batches accumulated vs stacked at the seed profile: kernels per step and time per kernel
#    group (time_breakdown_seed.csv and the kernel tables, copied into the tables' folder), then what is alive
#    at each one's memory peak. The timed rows themselves are step 1's bench_seed.csv (ours_fast_accum, ours_fast).
run 5 && python bench.py --profile seed --impls ours_fast_accum,ours_fast --kernel_table 1 --input_file input.txt \
  --out_dir "$RUNS"/diag/stack && cp "$RUNS"/diag/stack/time_breakdown_seed.* "$RUNS"/diag/stack/kernels_seed_*.txt "$B"/
run 5 && python bench.py --profile seed --impls ours_fast_accum,ours_fast --memory_peak 1 --warmup 5 --steps 5 \
  --input_file input.txt --out_dir "$RUNS"/diag
# what comes back from the device (at most 8 files a call): one archive
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/bench_step_$step.tgz" --exclude=.cache "$B"/*.csv "$B"/*.json "$B"/*.png \
    "$RUNS"/diag 2>/dev/null
fi
