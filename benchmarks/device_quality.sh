#!/usr/bin/env bash
# Quality per GPU-minute on the device machine (.assets/ carried: realdocs prepared by prepare_data.py, input.txt,
# tokenizer.json): benchmarks/quality.py's sections on the one card, each recipe its own train.py process (the
# minutes below were measured when a section ran in one process; a process adds its start-up and compile, ~25 s
# a recipe with warm caches on an H100: results/time_to_loss/*_runs.csv's process_s against train_s). Pass the parts:
#   realdocs  (the 480 s limit below ends it after 6 of the 9 recipes on an H200, cold caches: 72 s of compile)
#             the lr/optimizer/schedule sweep at seq 2048 x micro-batch 16, 400 steps (13.1M tokens) on realdocs,
#             and in the same process transformers + torch.compile with the best AdamW recipe of the sweep: the
#             time-to-loss table is computed from these runs (about 8 minutes on an H200)
#   seed      the seed's shape (seq 256 x 4 windows a step) on input.txt, 1000 steps per recipe (about 2 minutes)
#   step      the Muon step against the AdamW step at seq 2048 x micro-batch 48 (the best micro-batch): train.py's
#             default Muon step (NorMuon, momentum warmup, compiled passes) and that step with one piece taken back
#             each (quality.py's STEP_ROWS; about 8 minutes on an H100: each row compiles the model again)
#   step16    the same at micro-batch 16, where the quality sections run
#   schedules the second realdocs sweep, with its own two references (the AdamW recipe, the best AdamW of the first):
#             Muon at 5e-3 and 1e-3, Muon under cosine, AdamW under WSD (about 8 minutes)
#   seed5000  the seed's shape over the seed's 5,000 steps: the AdamW recipe, the best AdamW and the best Muon of the
#             realdocs sweeps (about 4 minutes)
#   crossover seq 2048 x micro-batch 4 (8,192 tokens a step), 1,000 steps: where --optimizer auto switches
#             (CROSSOVER_STEPS, CROSSOVER_RECIPES, CROSSOVER_TIMEOUT to cut it down)
#   horizon   Muon 5e-3 over 200 steps (half the tokens) beside the best AdamW over 400, with a longer decay, a
#             shorter warmup, a higher Muon or AdamW-part lr: which reaches that AdamW's loss soonest (about 5 minutes)
#   horizon2  the two best changes of 'horizon' together (5% warmup, AdamW part 1e-2 or 2e-2) over 200 and 190 steps
#   adamw_part  those changes over the full 400 steps, beside the default Muon recipe (about 3 minutes)
#   seeds     the half-time comparison again under other seeds (init and batch order), one process per seed
#             (SEEDS, default "1 2 3"): the best AdamW over 400 steps, the default Muon and the tuned Muon over 200;
#             how much of the 0.49-0.52 spread is noise (about 2 minutes a seed once the compile cache is warm)
#   mb48      the same 13.1M tokens at micro-batch 48 (the fastest at seq 2048, where the Muon step costs +3%
#             instead of +7%): 134 steps, the best AdamW and Muon at their micro-batch-16 lr and above (about 5 minutes)
#   bracket   the best AdamW's lr under WSD bracketed from above, at micro-batch 16 (1e-3 and 2e-3, beside the default
#             Muon over 400 and 200 steps) and at micro-batch 48 (2e-3 and 3e-3, beside the default Muon): is the
#             reference of the half-time target the best AdamW there is (about 8 minutes)
#   defaults  the rows the time-to-loss table needs in one process: the AdamW recipe (cosine 3e-4), the best AdamW
#             (WSD 1e-3), the default Muon recipe (5e-3, WSD) over the same 400 steps and over a 200- and a 160-step
#             horizon (what a user who wants the AdamW loss sooner runs), and transformers + compile with the best AdamW
#             recipe (about 7 minutes)
# What comes back in $OUT: quality_<section>_{runs,curves,ttl}.csv, the plot, the log; committed in results/bench/
# (quality.py's default --out_dir, which update_readme.py reads).
set -u
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
OUT=${OUT:-/tmp/quality_out}
mkdir -p "$OUT"
parts=" ${*:-realdocs} "
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
Q=(python benchmarks/quality.py --tokenizer_id "$SMOLLM2_TOKENIZER" --out_dir "$OUT")
want() { [[ "$parts" == *" $1 "* ]]; }
sweep() {  # SECONDS SECTION quality.py-flags...: one sweep, its log in $OUT
  local limit=$1 section=$2; shift 2
  timeout "$limit" "${Q[@]}" --section "$section" "$@" --work_dir /tmp/quality_runs 2>&1 | tee "$OUT/quality_$section.log"
}
R2048=(--input_file .assets/realdocs --seq_len 2048)  # realdocs as prepared by the README, seq 2048
if want realdocs; then
  sweep 480 realdocs_2048 "${R2048[@]}" --micro_batch 16 --steps 400 --eval_every 25 --val_windows 64 \
    --recipes muon_wsd_3e-3,adamw_cos_3e-4,adamw_cos_1e-3,adamw_cos_3e-3,hf_best_adamw,muon_wsd_1e-2,muon_wsd_1e-3,muon_cos_3e-3,adamw_wsd_1e-3
fi
if want schedules; then
  sweep 540 realdocs_2048_schedules "${R2048[@]}" --micro_batch 16 --steps 400 --eval_every 25 --val_windows 64 \
    --recipes adamw_cos_3e-4,adamw_cos_1e-3,muon_wsd_3e-3,muon_wsd_5e-3,muon_cos_3e-3,adamw_wsd_1e-3,muon_wsd_1e-3
fi
if want seed5000; then
  sweep "${SEED5000_TIMEOUT:-330}" seed_input_5000 --input_file input.txt --seq_len 256 --micro_batch 4 --steps 5000 \
    --eval_every 250 --val_windows 64 --recipes "${SEED5000_RECIPES:-adamw_cos_3e-4,muon_wsd_5e-3,adamw_wsd_1e-3}"
fi
if want crossover; then
  sweep "${CROSSOVER_TIMEOUT:-260}" realdocs_2048_mb4 "${R2048[@]}" --micro_batch 4 --steps "${CROSSOVER_STEPS:-1000}" \
    --eval_every 50 --val_windows 64 --recipes "${CROSSOVER_RECIPES:-adamw_cos_3e-4,adamw_wsd_1e-3,muon_wsd_5e-3}"
fi
if want defaults; then
  sweep "${DEFAULTS_TIMEOUT:-540}" realdocs_2048_defaults "${R2048[@]}" --micro_batch 16 --steps 400 --eval_every 20 \
    --val_windows 64 --recipes adamw_cos_3e-4,adamw_wsd_1e-3,muon_wsd_5e-3,muon_wsd_5e-3_n200,muon_wsd_5e-3_n160,hf_best_adamw
fi
if want horizon; then
  sweep 500 realdocs_2048_horizon "${R2048[@]}" --micro_batch 16 --steps 400 --eval_every 10 --val_windows 64 \
    --recipes adamw_wsd_1e-3,muon_wsd_5e-3_n200,muon_wsd_5e-3_n200_d0.4,muon_wsd_5e-3_n200_w0.05,muon_wsd_5e-3_n200_d0.5_w0.05,muon_wsd_8e-3_a5e-3_n200,muon_wsd_5e-3_a1e-2_n200,muon_wsd_5e-3_n180_d0.4_w0.05
fi
if want horizon2; then
  sweep 300 realdocs_2048_horizon2 "${R2048[@]}" --micro_batch 16 --steps 400 --eval_every 10 --val_windows 64 \
    --recipes adamw_wsd_1e-3,muon_wsd_5e-3_a1e-2_n200_w0.05,muon_wsd_5e-3_a1e-2_n190_w0.05,muon_wsd_5e-3_a2e-2_n200_w0.05
fi
if want adamw_part; then
  sweep 280 realdocs_2048_adamw_part "${R2048[@]}" --micro_batch 16 --steps 400 --eval_every 20 --val_windows 64 \
    --recipes muon_wsd_5e-3,muon_wsd_5e-3_a1e-2,muon_wsd_5e-3_a1e-2_w0.05
fi
if want seeds; then
  for seed in ${SEEDS:-1 2 3}; do
    sweep 240 "realdocs_2048_seed$seed" --seed "$seed" "${R2048[@]}" --micro_batch 16 --steps 400 --eval_every 10 \
      --val_windows 64 --recipes adamw_wsd_1e-3,muon_wsd_5e-3_n200,muon_wsd_5e-3_a1e-2_n200_w0.05
  done
fi
if want mb48; then
  sweep 420 realdocs_2048_mb48 "${R2048[@]}" --micro_batch 48 --steps 134 --eval_every 2 --val_windows 64 \
    --recipes adamw_wsd_1e-3,adamw_wsd_2e-3,muon_wsd_5e-3,muon_wsd_8e-3
fi
if want bracket; then
  sweep 300 realdocs_2048_bracket "${R2048[@]}" --micro_batch 16 --steps 400 --eval_every 10 --val_windows 64 \
    --recipes adamw_wsd_1e-3,adamw_wsd_2e-3,muon_wsd_5e-3,muon_wsd_5e-3_n200
  sweep 270 realdocs_2048_mb48_bracket "${R2048[@]}" --micro_batch 48 --steps 134 --eval_every 2 --val_windows 64 \
    --recipes adamw_wsd_2e-3,adamw_wsd_3e-3,muon_wsd_5e-3
fi
if want step; then
  sweep 500 step_time "${R2048[@]}" --micro_batch 48 --timed 20
fi
if want step16; then
  sweep 500 step_time_mb16 "${R2048[@]}" --micro_batch 16 --timed 30
fi
if want seed; then
  sweep 420 seed_input --input_file input.txt --seq_len 256 --micro_batch 4 --steps 1000 --eval_every 100 \
    --val_windows 64 --recipes adamw_cos_3e-4,muon_wsd_3e-3,adamw_cos_1e-3
fi
