#!/usr/bin/env bash
# Set up (setup.sh) and run the main job on the default corpus, input.txt: verify the model, train the seed's
# step A (5000 steps from scratch), resume it into step B (to 5050), and render the results into the README.
# Without a CUDA GPU the same pipeline runs on the tiny preset on the CPU (minutes, not hours) into out_tiny_cpu/.
#   SMOLLM2_CPU_STEPS=N   step A's length on the CPU (default 500; step B adds 50)
set -euo pipefail
cd "$(dirname "$0")"
source ./setup.sh

SEED_FLAGS=(--input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 --log_every 50 --save_every 250)
python sanity_check.py
if python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    python train.py "${SEED_FLAGS[@]}" --max_steps 5000 --resume 0 --sample_every 500
    python train.py "${SEED_FLAGS[@]}" --max_steps 5050 --resume 1 --sample_every 500
    python update_readme.py
    echo "run.sh: done. The log is out_smollm2_scratch/train.log; try the model:"
    echo "  python generate.py --checkpoint out_smollm2_scratch/checkpoints/checkpoint_latest.pt --prompt 'ROMEO:'"
else
    steps="${SMOLLM2_CPU_STEPS:-500}"
    echo "run.sh: no CUDA GPU here, so the 135M model would take many hours: running the same two steps on the"
    echo "run.sh: tiny preset (2 layers, 64 wide, the same tokenizer) on the CPU instead: $steps steps, then a resume to $((steps + 50))"
    # --overwrite 1: out_tiny_cpu/ is this script's own demo folder; a rerun starts it afresh.
    CPU_FLAGS=(--model tiny --device cpu --out_dir out_tiny_cpu --sample_every 250)
    python train.py "${SEED_FLAGS[@]}" "${CPU_FLAGS[@]}" --max_steps "$steps" --resume 0 --overwrite 1
    python train.py "${SEED_FLAGS[@]}" "${CPU_FLAGS[@]}" --max_steps "$((steps + 50))" --resume 1
    echo "run.sh: done. The log is out_tiny_cpu/train.log; try the model:"
    echo "  python generate.py --checkpoint out_tiny_cpu/checkpoints/checkpoint_latest.pt --prompt 'ROMEO:'"
fi
