"""Time to a held-out loss through train.py itself: one train.py process per recipe, one after another on one
card, each run's held-out loss against the seconds its steps took, and the time each takes to reach the loss
the best AdamW recipe ends at.

    python benchmarks/time_to_loss.py --input_file .assets/realdocs --corpus realdocs --max_steps 400
    python benchmarks/time_to_loss.py --input_file .assets/pystdlib --corpus pystdlib --max_steps 400

Every recipe is a train.py command with the shared flags below plus its own (RECIPES); the commands are
written beside the numbers, so each row can be run again as it is. The clock is the `steps_s` field of
train.py's validation events in metrics.jsonl: seconds spent in training steps in that process, after the
first step (compile, warm-up, CUDA-graph capture) and without validation, samples or saves. The reference
is the AdamW recipe with the lowest final held-out loss in this run; `share` is the time a recipe needs to
reach that loss over the reference's own time (linear between evaluations; empty where never reached).
`compile_s` is the time the clock leaves out: the first step, and each stage of a warmup that changes the step's
shape (compiled or captured again).
Rows go to <out_dir>/<corpus>_runs.{csv,json}, the curves to <corpus>_curves.{csv,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from smollm2.common import OneLineParser, UsageError, run_cli  # noqa: E402
from smollm2.io import write_table  # noqa: E402

# name -> train.py flags beyond the shared ones; "{w2}" / "{w5}" / "{w10}" / "{q25}" / "{q50}" are 2.5% / 5% / 10% /
# 25% / 50% of the recipe's own steps. A name ending in "_half" is its recipe over half of --max_steps (its own
# schedule: warmup and decay scale with the horizon).
RECIPES = {
    "adamw_wsd_1e-3": ["--optimizer", "adamw", "--lr_schedule", "wsd", "--max_lr", "1e-3"],
    "adamw_wsd_1e-3_w5": ["--optimizer", "adamw", "--lr_schedule", "wsd", "--max_lr", "1e-3", "--warmup_steps", "{w5}"],
    "adamw_wsd_2e-3": ["--optimizer", "adamw", "--lr_schedule", "wsd", "--max_lr", "2e-3"],
    "adamw_cos_3e-4": ["--optimizer", "adamw", "--lr_schedule", "cosine", "--max_lr", "3e-4"],
    "default": [],
    "muon_plain": ["--optimizer", "muon", "--muon_variant", "muon"],
    "muon_polar": ["--optimizer", "muon", "--muon_variant", "polar"],
    "muon_normuon": ["--optimizer", "muon", "--muon_variant", "normuon"],
    "muon_normuon_polar": ["--optimizer", "muon", "--muon_variant", "normuon_polar"],
    "muon_a1e-2_w0.05": ["--optimizer", "muon", "--adamw_lr", "1e-2", "--warmup_steps", "{w5}"],
    "warmup_5pct": ["--warmup_steps", "{w5}"],
    "warmup_10pct": ["--warmup_steps", "{w10}"],  # Muon's default before 5% (results/time_to_loss/*_warmup_*)
    "warmup_2.5pct": ["--warmup_steps", "{w2}"],  # half the default's 5%
    "lr_8e-3_w5": ["--max_lr", "8e-3", "--warmup_steps", "{w5}"],
    "lr_1e-2_w5": ["--max_lr", "1e-2", "--warmup_steps", "{w5}"],
    "muon_d0.5": ["--optimizer", "muon", "--lr_decay_fraction", "0.5"],
    "norm_lr_2e-2": ["--optimizer", "muon", "--norm_lr", "2e-2"],
    "norm_lr_1e-3": ["--optimizer", "muon", "--norm_lr", "1e-3"],
    "doc_mask": ["--doc_mask", "1"],
    "muon_normuon_doc_mask": ["--optimizer", "muon", "--muon_variant", "normuon", "--doc_mask", "1"],
    # the step's 16 windows as 2 accumulated micro-batches of 8: the cost of that shape alone, then the batch
    # growing from 8 to 16 windows over the first {q25} / {q50} steps (half the batch up to half of them)
    "mb8x2": ["--batch_size", "8", "--grad_accum", "2"],
    "batch_warmup_25pct": ["--batch_size", "8", "--grad_accum", "2", "--batch_warmup_steps", "{q25}"],
    "batch_warmup_50pct": ["--batch_size", "8", "--grad_accum", "2", "--batch_warmup_steps", "{q50}"],
    # Muon's momentum from 0.85 to 0.95 over the first quarter / half of the steps (modded-nanogpt's warmup)
    "momentum_warmup_25pct": ["--optimizer", "muon", "--muon_momentum_warmup_steps", "{q25}"],  # today's default
    "momentum_warmup_0": ["--muon_momentum_warmup_steps", "0"],  # the default before (results/time_to_loss/*_levers_*)
    "momentum_warmup_50pct": ["--optimizer", "muon", "--muon_momentum_warmup_steps", "{q50}"],
    # windows cut into pieces of 256, 512, 1024 tokens over the first quarter / half of the steps (each length
    # compiled once; that time is in the run's compile_s, not in its steps' time)
    "seq_warmup_25pct": ["--seq_warmup_steps", "{q25}"],
    "seq_warmup_50pct": ["--seq_warmup_steps", "{q50}"],
}


def known(name: str) -> bool:
    return name.removesuffix("_half") in RECIPES


def recipe_command(name: str, args, out_dir: str) -> list[str]:
    steps = args.max_steps // 2 if name.endswith("_half") else args.max_steps
    shared = ["--input_file", args.input_file, "--out_dir", out_dir, "--seq_len", str(args.seq_len),
              "--batch_size", str(args.batch_size), "--grad_accum", "1", "--max_steps", str(steps),
              "--val_every", str(args.val_every), "--val_batches", str(args.val_batches),
              "--log_every", str(args.val_every), "--save_every", "0", "--sample_every", "0", "--resume", "0",
              "--seed", str(args.seed), *args.extra]
    share = {"w2": 40, "w5": 20, "w10": 10, "q25": 4, "q50": 2}  # the placeholder's divisor of the steps
    own = [a.format(**{k: max(1, steps // d) for k, d in share.items()})
           for a in RECIPES[name.removesuffix("_half")]]
    return [sys.executable, "train.py", *shared, *own]


def read_run(metrics_path: str) -> dict:
    """One pass over a run's metrics.jsonl: its held-out points (validation events with a steps_s clock), its
    compile_s (first step, and each stage a warmup compiled or captured again) from the last wall event, and
    its peak GPU memory from the last done event (None where the run stopped before writing them)."""
    run = dict(points=[], compile_s=None, peak_mem_gb=None)
    with open(metrics_path, encoding="utf-8") as f:
        for e in map(json.loads, f):
            if e.get("event") == "val" and e.get("loss") is not None and e.get("steps_s") is not None:
                run["points"].append(dict(step=e["step"], tokens=e["tokens"], train_s=e["steps_s"], val_loss=e["loss"]))
            elif e.get("event") == "wall":
                run["compile_s"] = round(e["compile_s"], 1) if e.get("compile_s") is not None else None
            elif e.get("event") == "done":
                peak = e.get("peak_mem_bytes")
                run["peak_mem_gb"] = round(peak / 1e9, 2) if peak is not None else None
    return run


def time_to_reach(points: list[dict], target: float):
    """(train_s, tokens) where the held-out curve first reaches `target`, linear between evaluations; None if never."""
    for a, b in zip(points, points[1:]):
        if b["val_loss"] <= target:
            if a["val_loss"] <= target:
                return a["train_s"], a["tokens"]
            f = (a["val_loss"] - target) / (a["val_loss"] - b["val_loss"])
            return a["train_s"] + f * (b["train_s"] - a["train_s"]), a["tokens"] + f * (b["tokens"] - a["tokens"])
    return None


def run_recipe(name: str, cmd: list[str], out: str) -> Optional[dict]:
    """One train.py process (cmd, run folder `out`, removed first if an earlier run of this benchmark left it):
    its points, final held-out loss and steps' seconds, compile_s, peak memory and the process's wall time; None
    (with the tail of its output printed) where it failed or logged no held-out loss."""
    if os.path.isdir(out):
        shutil.rmtree(out)  # this benchmark's own earlier run folder
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(f"{name}: rc {proc.returncode}, {wall:.0f} s: {' '.join(cmd[1:])}", flush=True)
    metrics = os.path.join(out, "metrics.jsonl")
    if proc.returncode != 0 or not os.path.exists(metrics):
        print(proc.stdout[-2000:] + proc.stderr[-2000:], flush=True)
        return None
    run = read_run(metrics)
    if not run["points"]:
        return None
    last = run["points"][-1]
    return dict(run, steps=last["step"], tokens=last["tokens"], final_val_loss=last["val_loss"], train_s=last["train_s"],
                process_s=round(wall, 1), command="python " + " ".join(cmd[1:]))


def write_results(args, runs: list[dict], curves: list[dict]) -> None:
    """Each run's share of the best AdamW's time to reach that AdamW's final loss, written with the curves."""
    adamw = [r for r in runs if r["optimizer"] == "adamw"]
    if adamw:
        ref = min(adamw, key=lambda r: r["final_val_loss"])
        for r in runs:
            hit = time_to_reach(r["points"], ref["final_val_loss"])
            r.update(reference=ref["recipe"], reference_loss=round(ref["final_val_loss"], 4),
                     reached=hit is not None or r["final_val_loss"] <= ref["final_val_loss"],
                     share=round(hit[0] / ref["train_s"], 3) if hit else None,
                     ends_at_or_below=r["final_val_loss"] <= ref["final_val_loss"])
    write_table(os.path.join(args.out_dir, f"{args.corpus}_runs"),
                [{k: v for k, v in r.items() if k != "points"} for r in runs])
    write_table(os.path.join(args.out_dir, f"{args.corpus}_curves"), curves)


def card_name() -> str:
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:
        return "unknown"


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input_file", required=True, help="a prepared corpus folder (or raw text) for train.py")
    p.add_argument("--corpus", required=True, help="the corpus's name in the result files")
    p.add_argument("--recipes", default="adamw_wsd_1e-3,default,default_half",
                   help=f"comma-separated, from {', '.join(RECIPES)} (each also as NAME_half)")
    p.add_argument("--max_steps", type=int, default=400)
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--val_every", type=int, default=25)
    p.add_argument("--val_batches", type=int, default=4)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out_dir", default="results/time_to_loss")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="train.py flags every recipe gets (last: e.g. --extra --model tiny)")
    p.add_argument("--work_dir", default="runs/time_to_loss", help="the runs' folders (deleted when each ends)")
    args = p.parse_args(argv)
    names = [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if not known(n)]
    if unknown:
        raise UsageError(f"unknown recipe {unknown[0]}; pick from {', '.join(RECIPES)}")
    card = card_name()
    runs, curves = [], []
    for name in names:
        out = os.path.join(args.work_dir, args.corpus, name)
        run = run_recipe(name, recipe_command(name, args, out), out)
        if run is None:
            continue
        runs.append(dict(corpus=args.corpus, recipe=name, optimizer=name.split("_")[0], steps=run["steps"],
                         tokens=run["tokens"], final_val_loss=run["final_val_loss"], train_s=run["train_s"],
                         compile_s=run["compile_s"], process_s=run["process_s"], card=card, command=run["command"],
                         points=run["points"]))
        curves += [dict(corpus=args.corpus, recipe=name, card=card, **pt) for pt in run["points"]]
        write_results(args, runs, curves)  # after every recipe: a stopped benchmark keeps what it measured
    for r in runs:
        print(json.dumps({k: r.get(k) for k in ("recipe", "final_val_loss", "train_s", "share", "ends_at_or_below")}))
    return 0 if len(runs) == len(names) else 1


if __name__ == "__main__":
    run_cli(main, "time_to_loss.py")
