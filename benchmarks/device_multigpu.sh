#!/usr/bin/env bash
# Data-parallel scaling on one host of several GPUs, with the links it ran on, in one device call:
#   1. how the GPUs are joined: nvidia-smi topo -m -> results/bench/topology_<card>x<N>.txt
#   2. the all-reduce probe at each world size (538 MB float32, the gradients' size) -> results/bench/links.csv
#   3. bench.py --world_sizes at seq 2048 for each impl -> results/bench/multigpu_throughput_<card>x<N>.csv
# Usage: bash benchmarks/device_multigpu.sh [IMPLS] [MICRO_BATCH]
#   IMPLS default: what train.py runs under torchrun (DDP), the same under FSDP2, and the same with Muon
#   MICRO_BATCH default: 16
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
n=$(nvidia-smi -L | wc -l)
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed 's/NVIDIA //; s/ /_/g')
tag="${card}x${n}"
impls=${1:-ours_ddp_default,ours_fsdp_default,ours_ddp_muon}
mb=${2:-16}
sizes=1; for w in 2 4 8; do [ "$w" -le "$n" ] && sizes="$sizes,$w"; done
B=results/bench
mkdir -p "$B"
nvidia-smi topo -m > "$B/topology_${tag}.txt"
for w in ${sizes//,/ }; do
  [ "$w" -gt 1 ] && torchrun --standalone --nproc_per_node="$w" benchmarks/allreduce_probe.py --out "$B"/links
done
runs=${RUNS:-/tmp/smollm2_runs}/multigpu_${tag}
python bench.py --profile throughput --world_sizes "$sizes" --impls "$impls" --micro_batch "$mb" \
  --input_file input.txt --out_dir "$runs"
cp "$runs/multigpu_throughput.csv" "$B/multigpu_throughput_${tag}.csv"
cp "$runs/multigpu_throughput.json" "$B/multigpu_throughput_${tag}.json"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/multigpu_${tag}.tgz" "$B"/topology_"${tag}".txt "$B"/links.* \
    "$B"/multigpu_throughput_"${tag}".*
fi
