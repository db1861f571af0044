#!/usr/bin/env bash
# The single-GPU runs behind benchmarks/bench_*.csv, the loss-equivalence plot, the kernel table and the
# memory and max-batch probes (issue #4). Each step fits one 10-minute device call; pass the step number
# (default: all). Diagnostics go to .runs/diag (not committed); the tables go to benchmarks/.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export SMOLLM2_TOKENIZER=${SMOLLM2_TOKENIZER:-$PWD/.assets/tokenizer.json}  # no hub there: the carried file
[ -f input.txt ] || cp .assets/input.txt input.txt
step=${1:-all}
run() { [ "$step" = all ] || [ "$step" = "$1" ]; }
# 1-2. ours vs transformers, both profiles, one process each (every row of a table from one run, one card)
run 1 && python bench.py --profile seed --input_file input.txt
run 2 && python bench.py --profile throughput --input_file input.txt --loss_steps 200
# 3. where the time goes (kernel groups + top kernels) and what is alive at the seed profile's memory peak
run 3 && python bench.py --profile throughput --impls ours_compile --kernel_table 1 --warmup 10 --steps 20 \
  --input_file input.txt --out_dir .runs/diag
run 3 && python bench.py --profile seed --impls hf_eager,ours_compile,ours_fast --memory_peak 1 --warmup 10 --steps 20 \
  --input_file input.txt --out_dir .runs/diag
# 4. the largest micro-batch at seq 2048 for transformers (eager, compiled) and ours (compiled)
run 4 && python bench.py --profile none --max_batch_probe 1 --input_file input.txt
