#!/usr/bin/env bash
# --batch_warmup_steps, --muon_momentum_warmup_steps and --seq_warmup_steps on CUDA with the defaults (compile + CUDA graph), from
# metrics.jsonl: a run stopped inside the warmup at 9 steps and resumed to 30 must equal the uninterrupted run step
# by step, and the ramp's first steps (one micro-batch each) must equal a plain --grad_accum 1 run's. The CUDA
# graph is captured again at each stage change of the ramp (1 -> 2 -> 3 -> 4 micro-batches); Muon's momentum is a
# device tensor the graph reads; the sequence warmup's lengths (64 -> 128 -> 256) are each compiled and captured:
#   bash benchmarks/device_ramp_check.sh      (on the device machine, .assets carried)
set -u
source benchmarks/device_env.sh
W=/tmp/ramp; rm -rf $W; mkdir -p $W
COMMON="--input_file $PWD/.assets/input.txt --seq_len 256 --batch_size 1 --warmup_steps 5 --lr_decay_steps 30 --log_every 1 --sample_every 0 --val_every 0 --save_every 9"
run() { local dir=$1; shift; ( python train.py --out_dir $W/$dir $COMMON "$@" > $W/$dir.log 2>&1 ) || { echo "FAILED $dir"; tail -5 $W/$dir.log; }; }
run full --grad_accum 4 --batch_warmup_steps 16 --max_steps 30
run split --grad_accum 4 --batch_warmup_steps 16 --max_steps 9
run split --grad_accum 4 --batch_warmup_steps 16 --max_steps 30 --resume 1
run plain1 --grad_accum 1 --max_steps 4
M="--grad_accum 4 --optimizer muon --muon_momentum_warmup_steps 16"
run mfull $M --max_steps 30
run msplit $M --max_steps 9
run msplit $M --max_steps 30 --resume 1
run mplain --grad_accum 4 --optimizer muon --max_steps 30
S="--grad_accum 4 --batch_size 2 --seq_warmup_start 64 --seq_warmup_steps 16"
run sfull $S --max_steps 30
run ssplit $S --max_steps 9
run ssplit $S --max_steps 30 --resume 1
run seager $S --max_steps 30 --compile 0 --cuda_graph 0
python - <<'PY'
import json, os
W = "/tmp/ramp"
def rows(d):
    p = f"{W}/{d}/metrics.jsonl"
    return {e["step"]: (e["loss"], e["grad_norm"]) for e in map(json.loads, open(p)) if e.get("event") == "train"} if os.path.exists(p) else {}
def cmp(a, b, upto=None):
    A, B = rows(a), rows(b)
    common = [s for s in sorted(set(A) & set(B)) if upto is None or s <= upto]
    eq = sum(A[s] == B[s] for s in common)
    md = max((abs(A[s][0] - B[s][0]) for s in common), default=float("nan"))
    print(f"{a} vs {b}: steps {len(common)} equal {eq} max|dloss| {md:.3e}")
cmp("full", "split"); cmp("full", "plain1", upto=4)
cmp("mfull", "msplit"); cmp("mfull", "mplain")  # the last: should differ (the warmup acts)
cmp("sfull", "ssplit"); cmp("sfull", "seager")  # the last: close, not equal (compiled against eager)
for d in ("full",):
    ms = [e.get("ms_per_step") for e in map(json.loads, open(f"{W}/{d}/metrics.jsonl")) if e.get("event") == "train"]
    print(d, "ms/step by step:", ms)
PY
grep -h "batch warmup\|sequence warmup\|RESUME\|CUDA graph" $W/*.log | sort | uniq -c | head -20
