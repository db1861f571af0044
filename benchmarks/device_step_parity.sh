#!/usr/bin/env bash
# train.py of an earlier commit against today's, on CUDA with the
# defaults (compile + CUDA graph), from metrics.jsonl: losses and grad norms must be equal step by step, for
# AdamW (the seed's shape), a run stopped at 15 steps and resumed to 30, and plain Muon. The earlier tree goes in
# .assets/old (carried with .assets):
#   mkdir -p .assets/old && git archive 513545a | tar -x -C .assets/old
#   bash benchmarks/device_step_parity.sh      (on the device machine; 513545a: train.py before train_step)
set -u
source benchmarks/device_env.sh
W=/tmp/cg; rm -rf $W; mkdir -p $W
cp .assets/input.txt .assets/old/input.txt
COMMON="--input_file $PWD/.assets/input.txt --seq_len 256 --batch_size 1 --grad_accum 4 --warmup_steps 5 --lr_decay_steps 30 --log_every 1 --sample_every 0 --val_every 0 --save_every 15"
run() { local dir=$1; shift; local py=$1; shift; ( python $py --out_dir $W/$dir $COMMON "$@" > $W/$dir.log 2>&1 ) || { echo "FAILED $dir"; tail -5 $W/$dir.log; }; }
run old_adamw .assets/old/train.py --max_steps 30
run new_adamw train.py --max_steps 30
run new_resume train.py --max_steps 15
run new_resume train.py --max_steps 30 --resume 1
run old_muon .assets/old/train.py --max_steps 30 --optimizer muon
run new_muon train.py --max_steps 30 --optimizer muon --muon_variant muon
python - <<'PY'
import json, os
W = "/tmp/cg"
def rows(d):
    out = {}
    p = f"{W}/{d}/metrics.jsonl"
    if not os.path.exists(p): return out
    for line in open(p):
        e = json.loads(line)
        if e.get("event") == "train": out[e["step"]] = (e["loss"], e["grad_norm"])
    return out
def cmp(a, b):
    A, B = rows(a), rows(b)
    common = sorted(set(A) & set(B))
    eq = sum(A[s] == B[s] for s in common)
    md = max((abs(A[s][0] - B[s][0]) for s in common), default=float("nan"))
    print(f"{a:>18} vs {b:<18} steps {len(common):3d} equal {eq:3d} max|dloss| {md:.3e}  last {A.get(max(common))} {B.get(max(common))}" if common else f"{a} vs {b}: no common steps")
cmp("old_adamw", "new_adamw"); cmp("new_adamw", "new_resume")
cmp("old_muon", "new_muon")
for d in ("new_adamw", "new_muon"):
    r = rows(d); print(d, "ms/step at 30:", [json.loads(l).get("ms_per_step") for l in open(f"{W}/{d}/metrics.jsonl") if '"train"' in l][-1] if r else None)
PY
