#!/usr/bin/env bash
# The GPU runs behind the committed sweep and multi-GPU results, in the order they ran on one
# 4 x H100 host (device kind nvidia-h100-x4). Results go to $RUNS (default /tmp/smollm2_runs, outside the
# checkout: each device call re-copies the working tree and deletes what .git/info/exclude ignores there,
# a folder inside the repo included); the chosen files
# are then copied into ablation_results_500steps_profiles/, ablation_results_throughput/ and results/bench/.
# Re-running it resumes: train_ablation.py skips variants already in a CSV.
#
# It takes longer than one 10-minute device call. Start it in the background and have each call wait on
# it (calls must follow each other within the machine's idle window; a pid file, because `pgrep -f` would
# also match the calling shell, whose command line names this script):
#   R=/tmp/smollm2_runs; mkdir -p $R; if [ -f $R/driver.pid ] && kill -0 "$(cat $R/driver.pid)" 2>/dev/null; then echo running;
#   else STEPS="3" setsid nohup bash benchmarks/device_sweeps.sh >> $R/driver.log 2>&1 < /dev/null &
#   echo $! > $R/driver.pid; fi
#   for i in $(seq 540); do kill -0 "$(cat $R/driver.pid)" 2>/dev/null || break; sleep 1; done
#   tar czf $OUT/snap.tgz --exclude=runs --exclude=.cache -C $R .; tail -20 $R/driver.log
# (A job started under setsid outlives its call and runs on until the machine goes back.)
set -u
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
GPUS=${GPUS:-0,1,2,3}
RUNS=${RUNS:-/tmp/smollm2_runs}
STEPS=${STEPS:-"1 2 3"}   # the committed results of all three come from one 4 x H100 host
want() { [[ " $STEPS " == *" $1 "* ]]; }
mkdir -p "$RUNS"
rm -f "$RUNS"/ALL_DONE

# 1. data parallel scaling: our compiled step under torchrun + DDP at 1, 4 and 2 GPUs (seq 2048 x 16 per GPU),
#    float32 and bf16 gradient all-reduce (results/bench/multigpu_throughput.csv). The GPU links first.
#    Resumes per (size, impl). IMPLS=...,ours_compile_no_overlap,ours_compile_blocks adds the schedule
#    comparisons (none of their rows is committed).
nvidia-smi topo -m > "$RUNS"/topology.txt 2>&1
want 1 && python bench.py --profile throughput --world_sizes 1,4,2 \
    --impls "${IMPLS:-ours_compile,ours_compile_bf16grads}" \
    --warmup 8 --steps 15 --input_file input.txt --out_dir "$RUNS"/bench
# 2. the throughput profile: seq 2048 x micro-batch 16, no accumulation
want 2 && python train_ablation.py --profile throughput --input_file input.txt --steps 20 --ignore_first_steps 10 \
  --log_every 5 --run_all --gpus "$GPUS" --out_dir "$RUNS"/throughput
# 3. the seed's sweep: 13 variants x 500 steps at seq 256 x batch 1 x accum 4, one variant per card of $GPUS
#    (committed: GPUS=0,1,2 while device_bench.sh 1 and 2 ran on card 3 with CUDA_VISIBLE_DEVICES=3; ~16 min)
want 3 && python train_ablation.py --input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 --steps 500 \
  --ignore_first_steps 50 --log_every 50 --run_all --gpus "$GPUS" --out_dir "$RUNS"/seed
touch "$RUNS"/ALL_DONE
