"""Ablation sweep: the same short training run under different speed switches, one row per variant.

Each variant is one entry of smollm2.switches.VARIANTS (a named Switches, passed to train.py as its flags)
and runs as its own train.py process (clean GPU memory and compile caches, and exactly train.py's
training step). Steady tokens/s is read from the run's metrics.jsonl train records after
--ignore_first_steps (each interval's timing ends on a host-device synchronisation), peak memory from
its done record.

    python train_ablation.py --input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 --steps 500 \
        --ignore_first_steps 50 --log_every 50 --run_all --out_dir ablation_results_500steps_profiles
    python train_ablation.py ... --variant sdpa_on ...
    python train_ablation.py --profile throughput --run_all ...   # seq 2048 x micro-batch 16, no accumulation
    python train_ablation.py --run_all --gpus 0,1,2,3 ...          # four variants at a time, one GPU each
    python train_ablation.py --variant fast --nproc_per_node 2 ... # each variant under torchrun (DDP)

With --gpus, variants run side by side, each alone on its own card (CUDA_VISIBLE_DEVICES); the timings
are per card, so compare rows from cards of one kind. Under --nproc_per_node N a variant's tokens/s is the
total over its N processes and tok_s_per_gpu divides it; CUDA graphs are single-process, so they are off
there (the row says cuda_graph 0).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import signal
import subprocess
import sys
import time

from smollm2.common import OneLineParser, run_cli
from smollm2.metrics import LOG_FILE, log_events, read_events, summarize
from smollm2.switches import PROFILES, SAME_AS, VARIANTS, Switches

COLUMNS = ["timestamp", "variant", "steps", "seq_len", "batch_size", "grad_accum", "seed", "device", "autocast",
           "amp_dtype", "compile", "attention_impl", "tie_word_embeddings", "params", "warmup_ignored_steps",
           "avg_tok_s_steady", "peak_mem_bytes", "device_name", "mfu", "ms_per_step", "final_loss", "status",
           "cuda_graph", "fused_loss", "model_impl", "error", "world_size", "tok_s_per_gpu", "gpus", "stack_micro", "residual_dtype",
           "same_as"]
PLOTS = ("tokens_per_s.png", "peak_mem.png", "loss_curves.png")


def parse_args(argv=None):
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_file", default="input.txt")
    p.add_argument("--tokenizer_id", default=None, help="passed to train.py (default: train.py's)")
    p.add_argument("--model", default="smollm2-135m", help="architecture preset, passed to train.py (tiny for CPU tests)")
    p.add_argument("--device", default="auto")
    p.add_argument("--profile", default="seed", choices=list(PROFILES),
                   help="seed: the shape given by the three flags below (their defaults are the seed profile's); "
                        "any other: that profile's shape (smollm2.switches.PROFILES) instead of theirs")
    p.add_argument("--seq_len", type=int, default=PROFILES["seed"].seq_len)
    p.add_argument("--batch_size", type=int, default=PROFILES["seed"].micro_batch)
    p.add_argument("--grad_accum", type=int, default=PROFILES["seed"].grad_accum)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--ignore_first_steps", type=int, default=50, help="steps left out of the steady tokens/s")
    p.add_argument("--log_every", type=int, default=50)
    p.add_argument("--seed", type=int, default=1337)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run_all", action="store_true", help="every variant in VARIANTS")
    g.add_argument("--variant", action="append", choices=list(VARIANTS), help="one variant (repeatable)")
    p.add_argument("--out_dir", default="ablation_results_500steps_profiles")
    p.add_argument("--force", action="store_true", help="rerun variants already in the CSV")
    p.add_argument("--gpus", default="", help="comma list of CUDA device ids: run variants side by side, one per "
                   "card (or per --nproc_per_node cards)")
    p.add_argument("--nproc_per_node", type=int, default=1, help="run each variant under torchrun with N processes")
    args = p.parse_args(argv)
    if args.nproc_per_node < 1:
        p.error("--nproc_per_node must be at least 1")
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    if any(not g.isdigit() for g in gpus):
        p.error(f"--gpus takes device ids such as 0,1,2,3, got {args.gpus!r}")
    if gpus and len(gpus) % args.nproc_per_node:
        p.error(f"--gpus lists {len(gpus)} devices, not a multiple of --nproc_per_node {args.nproc_per_node}")
    n = args.nproc_per_node
    args.slots = [",".join(gpus[i:i + n]) for i in range(0, len(gpus), n)] or [None]
    if gpus and args.device == "auto":
        args.device = "cuda"  # a slot naming a card that is not there must fail, not fall back to the CPU
    if args.profile != "seed":
        shape = PROFILES[args.profile]
        args.seq_len, args.batch_size, args.grad_accum = shape.seq_len, shape.micro_batch, shape.grad_accum
    for name in ("steps", "log_every", "seq_len", "batch_size", "grad_accum"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not 0 <= args.ignore_first_steps < args.steps:
        p.error("--ignore_first_steps must be in [0, --steps)")
    return args


def variant_switches(args, name: str) -> Switches:
    sw = VARIANTS[name]
    return sw.but(cuda_graph=False) if args.nproc_per_node > 1 else sw  # graphs are single-process only


def run_dir(args, name: str) -> str:
    return os.path.join(args.out_dir, "runs", name)


def train_command(args, name: str) -> list[str]:
    flags = dict(input_file=args.input_file, model=args.model, device=args.device, seq_len=args.seq_len,
                 batch_size=args.batch_size, grad_accum=args.grad_accum, max_steps=args.steps,
                 log_every=args.log_every, seed=args.seed, save_every=0, sample_every=0, val_every=0,
                 warmup_steps=min(200, args.steps // 5), out_dir=run_dir(args, name),
                 overwrite=1, **variant_switches(args, name).train_flags())  # a rerun replaces its earlier run folder
    if args.tokenizer_id:
        flags["tokenizer_id"] = args.tokenizer_id
    train_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
    cmd = [sys.executable, train_py]
    if args.nproc_per_node > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.nproc_per_node}", train_py]
    for k, v in flags.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def measured(events: list[dict], ignore_first: int) -> dict:
    """Steady speed, final loss, peak memory, params and device of one variant's run records."""
    rows = [e for e in events if e.get("event") == "train" and e.get("tok_s") and e.get("ms_per_step")]
    steady = [e for e in rows if e["step"] > ignore_first] or rows[-1:]
    s = summarize(events)
    out = dict(losses=list(s.train))
    if steady:
        # Each train record covers the steps since the previous one; the last may be shorter. Total
        # steps over total time, so a short interval weighs what it lasted.
        prev = {e["step"]: p["step"] for p, e in zip(rows, rows[1:])}
        n = [e["step"] - prev.get(e["step"], 0) for e in steady]
        total_ms = sum(k * e["ms_per_step"] for k, e in zip(n, steady))
        out["ms_per_step"] = total_ms / sum(n)
        out["avg_tok_s_steady"] = sum(k * e["tok_s"] * e["ms_per_step"] for k, e in zip(n, steady)) / total_ms
        out["final_loss"] = rows[-1]["loss"]
        mfu = [e["mfu"] for e in steady if e.get("mfu") is not None]
        out["mfu"] = sum(mfu) / len(mfu) if mfu else ""
    if s.done and s.done[-1].get("peak_mem_bytes"):
        out["peak_mem_bytes"] = int(s.done[-1]["peak_mem_bytes"])
    for key in ("params", "device", "device_name"):
        if key in s.header:
            out[key] = s.header[key]
    return out


def variant_events(args, name: str) -> list[dict]:
    """The records of the variant's run folder: its metrics.jsonl (or train.log, in a folder without one)."""
    return read_events(os.path.join(run_dir(args, name), LOG_FILE))


def done_variants(csv_path: str) -> set[str]:
    if not os.path.exists(csv_path):
        return set()
    with open(csv_path, newline="") as f:
        return {r["variant"] for r in csv.DictReader(f)}


def append_row(csv_path: str, row: dict) -> None:
    new = not os.path.exists(csv_path)
    if not new:
        with open(csv_path, newline="") as f:
            if next(csv.reader(f), []) != COLUMNS:  # a CSV with other columns: rewrite it with COLUMNS
                rewrite_rows(csv_path)
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def rewrite_rows(csv_path: str, drop: frozenset = frozenset()) -> None:
    """Rewrite the CSV with today's COLUMNS, rows in VARIANTS order (side by side, variants finish out of
    order), without the variants in `drop` (--force: those about to rerun, so one row per variant)."""
    if not os.path.exists(csv_path):
        return
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["variant"] not in drop]
    order = {name: i for i, name in enumerate(VARIANTS)}
    rows.sort(key=lambda r: order.get(r["variant"], len(order)))
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


class Run:
    """One variant's train.py process (or torchrun group), its output going to files, not pipes, so
    several can run at once."""

    def __init__(self, args, name: str, gpus, cpus=None):
        os.makedirs(os.path.join(args.out_dir, "logs"), exist_ok=True)
        self.args, self.name, self.gpus = args, name, gpus
        self.log_path = os.path.join(args.out_dir, "logs", f"{name}.log")
        self.cmd = train_command(args, name)
        env = dict(os.environ)
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        if cpus:  # side by side: each variant on its own host cores, so one's compile workers don't slow another
            env["TORCHINDUCTOR_COMPILE_THREADS"] = str(len(cpus))
        self.out = open(self.log_path + ".stdout", "w")
        self.err = open(self.log_path + ".stderr", "w")
        # own process group: a Ctrl-C to the sweep is handled here, not delivered mid-step to the child
        self.proc = subprocess.Popen(self.cmd, stdout=self.out, stderr=self.err, text=True, env=env,
                                     start_new_session=True,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)

    def kill(self) -> None:
        # SIGTERM first: torchrun forwards it to its workers (which run in sessions of their own, out of
        # reach of a signal to this group); SIGKILL whatever is left.
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait()
        self.close()

    def close(self) -> tuple[str, str]:
        """Close the capture files and remove them; returns what the process wrote (stdout, stderr)."""
        texts = []
        for f in (self.out, self.err):
            f.close()
            with open(f.name) as g:
                texts.append(g.read())
            os.remove(f.name)
        return texts[0], texts[1]

    def row(self) -> dict:
        args, name = self.args, self.name
        stdout, stderr = self.close()
        with open(self.log_path, "w") as f:
            f.write("$ " + " ".join(self.cmd) + "\n" + stdout + stderr)
        v = variant_switches(args, name)
        world = args.nproc_per_node
        row = dict(timestamp=datetime.datetime.now().isoformat(timespec="seconds"), variant=name, steps=args.steps,
                   seq_len=args.seq_len, batch_size=args.batch_size, grad_accum=args.grad_accum, seed=args.seed,
                   autocast=int(v.autocast), amp_dtype="bf16" if v.autocast else "fp32", compile=int(v.compile),
                   attention_impl=v.attn, tie_word_embeddings=int(v.tie_word_embeddings),
                   warmup_ignored_steps=args.ignore_first_steps, cuda_graph=int(v.cuda_graph),
                   fused_loss=int(v.fused_loss), model_impl=v.model_impl, world_size=world,
                   stack_micro=v.stack_micro, residual_dtype=v.residual_dtype, same_as=SAME_AS.get(name, ""),
                   gpus=self.gpus or "")
        # A run that failed may have stopped before writing records, and an earlier run's would be stale:
        # then what it printed is read instead (the same parser).
        events = variant_events(args, name) if self.proc.returncode == 0 else log_events(stdout)
        parsed = measured(events, args.ignore_first_steps)
        row.update({k: val for k, val in parsed.items() if k in COLUMNS})
        if "avg_tok_s_steady" in parsed:
            row["tok_s_per_gpu"] = parsed["avg_tok_s_steady"] / world
        if self.proc.returncode == 0 and "avg_tok_s_steady" in parsed:
            row["status"] = "ok"
        else:
            err = (stderr.strip().splitlines() or ["no output"])[-1]
            row["status"] = "oom" if "out of memory" in stderr.lower() else "error"
            row["error"] = err[:300]
        return row


def plot(csv_path: str, out_dir: str, curves: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    if not rows:
        return
    names = [r["variant"] for r in rows]
    card = rows[0].get("device_name", "")
    for fname, key, scale, label in (("tokens_per_s.png", "avg_tok_s_steady", 1.0, "tokens/s (steady)"),
                                     ("peak_mem.png", "peak_mem_bytes", 1e-9, "peak memory (GB)")):
        vals = [float(r[key]) * scale if r.get(key) else 0.0 for r in rows]
        fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
        ax.bar(names, vals, color="#4c72b0")
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:,.0f}" if scale == 1.0 else f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(f"{label} per variant, seq {rows[0]['seq_len']} x batch {rows[0]['batch_size']} x accum "
                     f"{rows[0]['grad_accum']} ({card})")
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, fname), metadata={"Software": None})
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    for name in names:
        pts = curves.get(name)
        if pts:
            ax.plot([s for s, _ in pts], [l for _, l in pts], label=name, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (interval mean)")
    ax.set_title("Loss curves per variant")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "loss_curves.png"), metadata={"Software": None})
    plt.close(fig)


def load_curves(args) -> dict:
    curves = {}
    for name in VARIANTS:
        if events := variant_events(args, name):
            curves[name] = summarize(events).train
    return curves


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    csv_path = os.path.join(args.out_dir, "ablation_results.csv")
    names = list(VARIANTS) if args.run_all else list(dict.fromkeys(args.variant))
    if args.force:
        rewrite_rows(csv_path, drop=frozenset(names))
    done = done_variants(csv_path)
    stop = {"flag": False}

    def on_sigint(signum, frame):
        stop["flag"] = True
        print("\nCtrl-C: stopping after the current variant (the CSV keeps what finished).", flush=True)

    signal.signal(signal.SIGINT, on_sigint)
    running: dict[object, Run] = {}

    def on_sigterm(signum, frame):  # e.g. a job limit: the unfinished variants are lost, not left running
        for run in running.values():
            run.kill()
        print(f"SIGTERM: killed {', '.join(r.name for r in running.values()) or 'nothing'}; "
              f"the CSV keeps what finished.", flush=True)
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_sigterm)
    todo = []
    for name in names:
        if name in done:
            print(f"skip {name}: already in {csv_path} (use --force to rerun)")
        else:
            todo.append(name)
    if len(args.slots) > 1:  # side by side: the long eager variants first, so no card idles at the end
        todo.sort(key=lambda n: VARIANTS[n].compile or VARIANTS[n].cuda_graph)
    free = list(args.slots)
    cpus = {slot: None for slot in free}
    if len(free) > 1 and hasattr(os, "sched_getaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        per = max(1, len(cores) // len(free))
        cpus = {slot: set(cores[i * per:(i + 1) * per]) or set(cores) for i, slot in enumerate(free)}
    while todo or running:
        while todo and free and not stop["flag"]:
            slot, name = free.pop(0), todo.pop(0)
            print(f"run  {name}" + (f" on GPU {slot}" if slot is not None else "") + " ...", flush=True)
            running[slot] = Run(args, name, slot, cpus[slot])
        if stop["flag"]:
            todo.clear()
        finished = [slot for slot, run in running.items() if run.proc.poll() is not None]
        for slot in finished:
            row = running.pop(slot).row()
            free.append(slot)
            append_row(csv_path, row)
            with open(os.path.join(args.out_dir, "ablation_results.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
            tok = row.get("avg_tok_s_steady")
            print(f"     {row['variant']}: {row['status']}" + (f" | {tok:,.0f} tok/s" if tok else "") +
                  (f" | {row['error']}" if row.get("error") else ""), flush=True)
        if running and not finished:
            time.sleep(0.2)
    rewrite_rows(csv_path)
    plot(csv_path, args.out_dir, load_curves(args))
    print(f"results: {csv_path}")
    return 130 if stop["flag"] else 0


if __name__ == "__main__":
    run_cli(main, "train_ablation.py")
