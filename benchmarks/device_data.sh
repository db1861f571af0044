#!/usr/bin/env bash
# Data preparation on the device machine (.assets/ carried: input.txt, tokenizer.json, realdocs/). Pass the step:
#   1  prepare the realdocs corpus, train SmolLM2-135M on it for 1000 steps of seq 2048 x 16 (results/realdocs/)
#   2  the graded pair, the README's two commands as written (out_smollm2_scratch/train.log)
#   3  preparation throughput and the nanoGPT-style yardstick on the host's CPU cores (results/bench/data_prep.*)
#   4  throughput of both encoders on 2 of the host's cores (taskset) and on all 16, and training memory over
#      10,000 steps of train.py on the GPU (results/bench/data_prep.*)
set -u
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh
step=${1:-all}
run() { [ "$step" = all ] || [ "$step" = "$1" ]; }
R=results/realdocs
if run 1; then
  mkdir -p "$R"
  python prepare_data.py .assets/data/realdocs/python-docs .assets/data/realdocs/linux-docs-a.jsonl.gz \
    .assets/data/realdocs/linux-docs-b.parquet --out_dir /tmp/realdocs_ds --tokenizer_id .assets/tokenizer.json --quiet \
    2>&1 | tee "$R/prepare.log"
  python -c "import json, sys; m = json.load(open('/tmp/realdocs_ds/manifest.json'))
keep = ('tokenizer', 'eos_id', 'dtype', 'settings', 'val', 'totals', 'job_key', 'checksum')
s = {k: m[k] for k in keep}
g = {}
for x in m['sources']:  # per file group; the manifest itself lists every file with its sha256
    k = 'python-docs/*.txt' if '/python-docs/' in x['path'] else x['path'].split('/')[-1]
    g.setdefault(k, {'files': 0, 'bytes': 0}); g[k]['files'] += 1; g[k]['bytes'] += x['bytes']
s['sources'] = g
s['shards'] = {k: len(v) for k, v in m['shards'].items()}
json.dump(s, open('$R/manifest_summary.json', 'w'), indent=1)"
  python train.py --input_file /tmp/realdocs_ds --out_dir "$R" --seq_len 2048 --batch_size 16 --grad_accum 1 \
    --max_steps 1000 --warmup_steps 100 --log_every 25 --val_every 100 --val_batches 16 --save_every 0 \
    --sample_every 500 --sample_prompt "The kernel" --tokenizer_id .assets/tokenizer.json
fi
if run 3; then
  python benchmarks/bench_data.py --what throughput,yardstick --workers 1,4,16 --corpus_mb 200 --shared_dir .assets \
    --tokenizer_id .assets/tokenizer.json --out_dir results/bench
fi
if run 4; then
  common=(--what throughput --shared_dir .assets --tokenizer_id .assets/tokenizer.json --out_dir results/bench)
  taskset -c 0,1 python benchmarks/bench_data.py "${common[@]}" --workers 1,2 --corpus_mb 100 --machine vm/16cpu-taskset2
  python benchmarks/bench_data.py "${common[@]}" --workers 16 --corpus_mb 200
  python benchmarks/bench_data.py --what train_rss --train_device cuda --max_steps 10000 --train_inputs .assets/data/realdocs \
    --shared_dir .assets --tokenizer_id .assets/tokenizer.json --out_dir results/bench
fi
if run 2; then
  rm -rf out_smollm2_scratch/checkpoints out_smollm2_scratch/cache out_smollm2_scratch/train.log out_smollm2_scratch/run.json
  python train.py --input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 --max_steps 5000 --resume 0 --log_every 50 --save_every 250 --sample_every 500
  python train.py --input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 --max_steps 5050 --resume 1 --log_every 50 --save_every 250 --sample_every 500
fi
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/data_step_$step.tgz" "$R"/*.log "$R"/*.json results/bench/data_prep.* out_smollm2_scratch/train.log 2>/dev/null
fi
