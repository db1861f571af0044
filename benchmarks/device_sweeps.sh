#!/usr/bin/env bash
# The GPU runs behind the committed sweep and multi-GPU results, in the order they ran on one
# 4 x H100 host (device kind nvidia-h100-x4). Results go to .runs/ (not committed); the chosen files
# are then copied into ablation_results_500steps_profiles/, ablation_results_throughput/ and benchmarks/.
# Re-running it resumes: train_ablation.py skips variants already in a CSV.
#
# It takes longer than one 10-minute device call. Start it in the background and have each call wait on
# it (calls must follow each other within the machine's idle window; a pid file, because `pgrep -f` would
# also match the calling shell, whose command line names this script):
#   mkdir -p .runs; if [ -f .runs/driver.pid ] && kill -0 "$(cat .runs/driver.pid)" 2>/dev/null; then echo running;
#   else STEPS="1 3" setsid nohup bash benchmarks/device_sweeps.sh >> .runs/driver.log 2>&1 < /dev/null &
#   echo $! > .runs/driver.pid; fi
#   for i in $(seq 540); do kill -0 "$(cat .runs/driver.pid)" 2>/dev/null || break; sleep 1; done
#   tar czf $OUT/snap.tgz --exclude=runs --exclude=.cache .runs; tail -20 .runs/driver.log
# (Whether a background job outlives its call was not yet seen; if not, run it in the foreground under
# `timeout` each call: every step resumes where the last call stopped.)
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export SMOLLM2_TOKENIZER=${SMOLLM2_TOKENIZER:-$PWD/.assets/tokenizer.json}  # no hub there: the carried file
GPUS=${GPUS:-0,1,2,3}
STEPS=${STEPS:-"1 3"}   # step 2 (the seq-2048 sweep) ran on 2026-11-27 and is committed; STEPS="2" reruns it
want() { [[ " $STEPS " == *" $1 "* ]]; }
mkdir -p .runs
rm -f .runs/ALL_DONE
[ -f input.txt ] || cp .assets/input.txt input.txt   # the device machine has no internet

# 1. data parallel scaling: our compiled step under torchrun + DDP at 1, 2 and 4 GPUs (seq 2048 x 16 per GPU):
#    whole-model graph split at DDP's buckets (overlap; what train.py does), the same without overlap, and
#    per-layer graphs (smollm2_distributed.build_forward). The GPU links first. Resumes per (size, impl).
nvidia-smi topo -m > .runs/topology.txt 2>&1
want 1 && python bench.py --profile throughput --world_sizes 1,2,4 \
    --impls ours_compile,ours_compile_no_overlap,ours_compile_blocks \
    --warmup 8 --steps 15 --input_file input.txt --out_dir .runs/bench
# 1b. only if 4 GPUs still fall short: the same with gradients all-reduced in bf16
want 1 && [ -n "${BF16_GRADS:-}" ] && \
  python bench.py --profile throughput --world_sizes 1,2,4 --impls ours_compile,ours_compile_bf16grads \
    --warmup 8 --steps 15 --input_file input.txt --out_dir .runs/bench
# 2. the throughput profile: seq 2048 x micro-batch 16, no accumulation
want 2 && python train_ablation.py --profile throughput --input_file input.txt --steps 20 --ignore_first_steps 10 \
  --log_every 5 --run_all --gpus "$GPUS" --out_dir .runs/throughput
# 3. the seed's sweep: 13 variants x 500 steps at seq 256 x batch 1 x accum 4, four variants at a time
want 3 && python train_ablation.py --input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 --steps 500 \
  --ignore_first_steps 50 --log_every 50 --run_all --gpus "$GPUS" --out_dir .runs/seed
touch .runs/ALL_DONE
