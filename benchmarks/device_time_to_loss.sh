#!/usr/bin/env bash
# Time to the best AdamW's held-out loss through train.py processes on the device machine (.assets/ carried:
# tokenizer.json, input.txt, realdocs and pystdlib prepared by prepare_data.py; see docs/quality.md):
#   bash benchmarks/device_time_to_loss.sh realdocs      # or pystdlib, or both
# One train.py process per recipe at seq 2048 x 16, 400 steps, held-out loss every 25 steps; the Inductor
# cache is shared by the processes, so only the first compiles cold. Results come back in $OUT.
set -u
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
OUT=${OUT:-/tmp/ttl_out}
mkdir -p "$OUT"
RECIPES=${RECIPES:-adamw_wsd_1e-3,default,default_half}
for corpus in "${@:-realdocs}"; do
  python benchmarks/time_to_loss.py --input_file ".assets/$corpus" --corpus "$corpus" --recipes "$RECIPES" \
      --out_dir "$OUT" --work_dir /tmp/ttl_runs ${STEPS:+--max_steps $STEPS} 2>&1 | tee -a "$OUT/time_to_loss.log"
done
