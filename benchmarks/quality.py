"""Quality per GPU-minute: training recipes side by side on one card, each its own train.py process, each
run's held-out loss against the wall-clock of its steps and the tokens seen, and the time each takes to reach a
held-out loss.

    python benchmarks/quality.py --input_file data/realdocs --seq_len 2048 --micro_batch 16 --steps 400 \
        --section realdocs_2048 --recipes adamw_cos_3e-4,adamw_cos_1e-3,...,hf_best_adamw
    python benchmarks/quality.py --section step_time --seq_len 2048 --micro_batch 48 --input_file data/realdocs

A recipe is named <optimizer>_<schedule>_<peak lr>: adamw_cos_1e-3, muon_wsd_3e-3 (Muon's lr; its AdamW part
takes the same peak unless the name carries _a<lr>, e.g. muon_wsd_3e-3_a1e-2), optionally with its own horizon
_n<steps> (muon_wsd_5e-3_n200: the same schedule over 200 steps instead of --steps), warmup _w<fraction> of its
steps (else --warmup_fraction) and WSD decay _d<fraction> (else 0.2). The name is a train.py command
(recipe_command, printed in the log and the runs table's `command` column) that pins what the name says and
what these sweeps have always run, whatever train.py's defaults become: grad clip 1.0, weight decay 0.1, linear
warmup over --warmup_fraction of the steps, cosine down to 10% of the peak (train.py's adamw recipe's ratio), wsd
to 0 over the last 20% (SmolLM2's), Keller Jordan's Muon update with a constant momentum, the whole model
compiled as one graph; the same seeded init and batches for every recipe (train.py's --seed, epoch sampler).
`hf_best_adamw` is transformers' LlamaForCausalLM (--model_impl hf, compiled, no CUDA graph or fused loss: bench.py's
hf_compile path) with the best AdamW recipe of those run before it in the same sweep (lowest final loss). Ours
runs train.py's default CUDA path (compile, CUDA graph, fused loss, bf16 residual stream).

Clocks: train.py's `steps_s` (seconds of training steps after the first, without validation; the first step,
with its compile, warm-up and CUDA-graph capture, is `first_step_s`, the run's compile_s). The held-out loss is
the mean over the first --val_windows windows of the validation split (rounded up to whole micro-batches),
every --eval_every steps, which must divide each recipe's steps so that the last point is the run's end. Rows
are appended to <out_dir>/quality_<section>_*.csv as each recipe ends (a sweep cut short keeps the rows it
finished); the time-to-loss table is computed from this sweep's curves alone. The committed tables up to
2026-12 ran these recipes through a loop of this file's own in one process; train.py with these flags gives the
same held-out losses (on the CPU: to the last bit for ours, within 5e-7 for transformers').
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from smollm2.common import OneLineParser, UsageError, device_name, run_cli  # noqa: E402
from smollm2.data import TokenBatches, load_training_data  # noqa: E402
from smollm2.switches import DEFAULT_PATH, IMPLS, Switches  # noqa: E402
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID, load_tokenizer  # noqa: E402
from smollm2.muon import momentum_at, set_momentum  # noqa: E402
from smollm2.training import DEFAULT_MUON_VARIANT, WSD_DECAY_FRACTION, build_train_step  # noqa: E402
from smollm2_config import get_config  # noqa: E402
from smollm2_model import SmolLM2ForCausalLM  # noqa: E402
from time_to_loss import run_recipe, time_to_reach  # noqa: E402

ADAMW_RECIPE = "adamw_cos_3e-4"  # train.py's --optimizer adamw recipe (the seed's command's): 3e-4, cosine to 3e-5
COSINE_MIN_RATIO = 0.1
CURVE_COLUMNS = ["section", "recipe", "step", "tokens", "train_s", "val_loss", "card"]
RUN_COLUMNS = ["section", "recipe", "impl", "optimizer", "schedule", "max_lr", "adamw_lr", "min_lr", "steps", "tokens",
               "seq_len", "micro_batch", "final_val_loss", "train_s", "ms_per_step", "first_step_s", "peak_mem_gb",
               "card", "torch", "command"]


def parse_recipe(name: str, best_adamw: str | None) -> dict:
    if name == "hf_best_adamw":
        if best_adamw is None:
            raise UsageError("hf_best_adamw needs AdamW recipes before it in --recipes")
        return {**parse_recipe(best_adamw, None), "impl": "hf", "name": name, "like": best_adamw}
    parts = name.split("_")
    try:
        optimizer, schedule, lr = parts[0], {"cos": "cosine", "wsd": "wsd"}[parts[1]], float(parts[2])
        extra = {p[0]: p[1:] for p in parts[3:]}
        if optimizer not in ("adamw", "muon") or set(extra) - {"a", "n", "w", "d"}:
            raise ValueError
        adamw_lr = float(extra["a"]) if "a" in extra else (lr if optimizer == "muon" else None)
        steps = int(extra["n"]) if "n" in extra else None
        warmup = float(extra["w"]) if "w" in extra else None
        decay = float(extra.get("d", WSD_DECAY_FRACTION))
        if not 0 < decay <= 1 or (warmup is not None and not 0 <= warmup < 1):
            raise ValueError
    except (KeyError, IndexError, ValueError):
        raise UsageError(f"recipe {name!r} is not <adamw|muon>_<cos|wsd>_<lr>[_a<lr>][_n<steps>][_w<warmup "
                         f"fraction>][_d<decay fraction>]") from None
    min_lr = lr * COSINE_MIN_RATIO if schedule == "cosine" else 0.0
    return dict(name=name, impl="ours", optimizer=optimizer, schedule=schedule, max_lr=lr, adamw_lr=adamw_lr,
                min_lr=min_lr, steps=steps, warmup_fraction=warmup, decay_fraction=decay)


def recipe_command(recipe: dict, args, out_dir: str) -> list[str]:
    """The train.py command of a recipe (parse_recipe's dict) in this sweep: the shared shape, data and
    evaluation, the recipe's optimizer, schedule and lrs, and everything else these sweeps fix pinned."""
    n, B = recipe["steps"] or args.steps, args.micro_batch
    wf = args.warmup_fraction if recipe["warmup_fraction"] is None else recipe["warmup_fraction"]
    flags = ["--input_file", args.input_file, "--tokenizer_id", args.tokenizer_id, "--model", args.model,
             "--device", args.device, "--out_dir", out_dir, "--seq_len", args.seq_len, "--batch_size", B,
             "--grad_accum", 1, "--max_steps", n, "--val_every", args.eval_every,
             "--val_batches", math.ceil(args.val_windows / B), "--log_every", args.eval_every, "--save_every", 0,
             "--sample_every", 0, "--resume", 0, "--seed", args.seed,
             "--optimizer", recipe["optimizer"], "--lr_schedule", recipe["schedule"], "--max_lr", f"{recipe['max_lr']:g}",
             "--min_lr", f"{recipe['min_lr']:g}", "--warmup_steps", max(1, round(wf * n)),
             "--weight_decay", 0.1, "--grad_clip", 1.0, "--compile_scope", "model"]
    if recipe["schedule"] == "wsd":
        flags += ["--lr_decay_fraction", f"{recipe['decay_fraction']:g}"]
    if recipe["optimizer"] == "muon":
        flags += ["--adamw_lr", f"{recipe['adamw_lr']:g}", "--muon_variant", "muon", "--muon_momentum_warmup_steps", 0]
    if recipe["impl"] == "hf":
        flags += ["--model_impl", "hf", "--cuda_graph", 0, "--fused_loss", 0]
    return [sys.executable, "train.py", *map(str, flags)]


def train_recipe(recipe: dict, args) -> dict | None:
    """One recipe as its own train.py process: the runs table's row with its curve under "points" (None
    where the process failed; its output's tail is printed)."""
    out = os.path.join(args.work_dir, args.section, recipe["name"])
    run = run_recipe(recipe["name"], recipe_command(recipe, args, out), out)
    if run is None:
        return None
    return dict(recipe=recipe["name"], impl=recipe["impl"], optimizer=recipe["optimizer"], schedule=recipe["schedule"],
                max_lr=recipe["max_lr"], adamw_lr=recipe["adamw_lr"], min_lr=recipe["min_lr"], steps=run["steps"],
                tokens=run["tokens"], seq_len=args.seq_len, micro_batch=args.micro_batch, final_val_loss=run["final_val_loss"],
                train_s=run["train_s"], ms_per_step=1000 * run["train_s"] / max(1, run["steps"] - 1),
                first_step_s=run["compile_s"], peak_mem_gb=run["peak_mem_gb"], command=run["command"],
                points=run["points"])


def ttl_rows(section: str, runs: list[dict], card: str) -> list[dict]:
    """Time to the held-out loss of ADAMW_RECIPE at the end of its run, and of the best AdamW recipe's. The
    first target keeps its label "today's default at the end", which the committed tables carry."""
    by_name = {r["recipe"]: r for r in runs}
    adamw = [r for r in runs if r["optimizer"] == "adamw" and r["impl"] == "ours"]
    targets = []
    if ADAMW_RECIPE in by_name:
        targets.append(("today's default at the end", by_name[ADAMW_RECIPE]))
    if adamw:
        best = min(adamw, key=lambda r: r["final_val_loss"])
        targets.append((f"best AdamW ({best['recipe']}) at the end", best))
    rows = []
    for label, ref in targets:
        for r in runs:
            hit = time_to_reach(r["points"], ref["final_val_loss"])
            rows.append(dict(section=section, target=label, target_loss=round(ref["final_val_loss"], 4),
                             recipe=r["recipe"], reached=hit is not None,
                             train_s=round(hit[0], 2) if hit else None, tokens=int(hit[1]) if hit else None,
                             share_of_reference_time=round(hit[0] / ref["train_s"], 3) if hit else None,
                             reference_train_s=round(ref["train_s"], 2), card=card))
    return rows


def append_rows(path: str, columns: list[str], rows: list[dict]) -> None:
    new = not os.path.exists(path)
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(path: str, section: str, runs: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in runs:
        pts = [p for p in r["points"] if p["step"] > 0]  # the sweeps before train.py drove them began at step 0
        for ax, key, scale in ((axes[0], "train_s", 1.0), (axes[1], "tokens", 1e-6)):
            ax.plot([p[key] * scale for p in pts], [p["val_loss"] for p in pts], label=r["recipe"],
                    linestyle="--" if r["impl"] == "hf" else "-")
    for ax, xl in zip(axes, ["wall-clock of the steps (s)", "tokens (M)"]):
        ax.set_xlabel(xl)
        ax.set_ylabel("held-out loss")
        ax.grid(alpha=0.3)
    lo = min(p["val_loss"] for r in runs for p in r["points"])
    hi = max(r["points"][min(3, len(r["points"]) - 1)]["val_loss"] for r in runs)
    for ax in axes:
        ax.set_ylim(lo - 0.1, hi + 0.1)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{section}: held-out loss ({runs[0]['card']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def build_model(optimizer: str, seed: int, device, preset: str):
    """step_time's model: train.py's default CUDA path (CPU: plain float32 eager with the fused loss), seeded."""
    sw = IMPLS[DEFAULT_PATH] if device.type == "cuda" else Switches(fused_loss=True)
    sw = sw.but(optimizer=optimizer)
    torch.manual_seed(seed)
    model = SmolLM2ForCausalLM(get_config(preset, attn_impl=sw.attn, residual_dtype=sw.residual_dtype))
    return model.to(device), sw


def release():
    # Dynamo's cache is kept: a new model of the same class and shapes reuses the compiled forward (main() raises
    # the recompile limit, so that a guard that does fail recompiles instead of falling back to eager).
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# step_time's rows: train.py's default AdamW step, its default Muon step (NorMuon, the momentum a device tensor
# for its warmup, the normalisation compiled with the update) and that step with one piece taken back each.
STEP_ROWS = (
    ("adamw", DEFAULT_PATH),
    ("muon", DEFAULT_PATH),
    ("muon", DEFAULT_PATH + "_unfused_normuon"),     # NorMuon's normalisation eager, before the compiled update
    ("muon", DEFAULT_PATH + "_float_momentum"),      # no momentum warmup: the momentum a Python float
    ("muon", DEFAULT_PATH + "_plain_muon"),          # --muon_variant muon (no per-neuron normalisation)
    ("muon", DEFAULT_PATH + "_eager_muon_update"),   # every elementwise pass of Muon eager (as under --compile 0)
)


def step_time(args, data, device, card, on_row=lambda rows: None) -> list[dict]:
    """The Muon step against the AdamW step on train.py's default CUDA path: 5 untimed steps (compile,
    capture), then --timed steps between two CUDA events (the CPU: the clock), for each row of STEP_ROWS.
    on_row(rows) gets the rows so far after each, so a stopped run keeps what it measured."""
    rows = []
    for optimizer, impl in STEP_ROWS:
        release()
        model, sw = build_model(optimizer, args.seed, device, args.model)
        step_fn = build_train_step(model, sw, device, lr=3e-3, weight_decay=0.1, grad_clip=1.0,
                                   adamw_lr=3e-3 if optimizer == "muon" else None,
                                   muon_variant="muon" if impl.endswith("_plain_muon") else DEFAULT_MUON_VARIANT,
                                   momentum_schedule=optimizer == "muon" and not impl.endswith("_float_momentum"))
        if impl.endswith("_eager_muon_update"):
            step_fn.optimizer.compile_update = False
        if impl.endswith("_unfused_normuon"):
            step_fn.optimizer.fuse_normuon = False

        def step(s, xs, ys):
            if optimizer == "muon":  # the warmup's moving momentum, filled before each step as train.py does
                set_momentum(step_fn.optimizer, momentum_at(s, 100))
            step_fn(xs, ys)

        for s in range(1, 6):
            step(s, *data.step_batch(s, 1, args.micro_batch, device))
        inputs = [data.step_batch(5 + s, 1, args.micro_batch, device) for s in range(1, args.timed + 1)]
        ms = timed_ms(device, lambda: [step(s, xs, ys) for s, (xs, ys) in enumerate(inputs, start=6)]) / args.timed
        cuda = device.type == "cuda"
        rows.append(dict(section=args.section, optimizer=optimizer, impl=impl, seq_len=args.seq_len,
                         micro_batch=args.micro_batch, ms_per_step=round(ms, 2),
                         tokens_per_s=round(args.micro_batch * args.seq_len / ms * 1000),
                         vs_adamw=round(ms / rows[0]["ms_per_step"], 3) if rows else None,
                         peak_mem_gb=round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if cuda else None,
                         card=card, torch=torch.__version__))
        print(json.dumps(rows[-1]), flush=True)
        on_row(rows)
        model = step_fn = inputs = None  # the memory goes back before the next row
    release()
    return rows


def timed_ms(device, work) -> float:
    """Milliseconds work() takes: between two CUDA events on a GPU, by the clock elsewhere."""
    sync(device)
    if device.type != "cuda":
        t0 = time.perf_counter()
        work()
        return (time.perf_counter() - t0) * 1000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    work()
    end.record()
    sync(device)
    return start.elapsed_time(end)


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input_file", default="input.txt", help="a folder made by prepare_data.py, or raw text (as train.py)")
    p.add_argument("--tokenizer_id", default=os.environ.get("SMOLLM2_TOKENIZER", DEFAULT_TOKENIZER_ID))
    p.add_argument("--section", required=True, help="names the rows and files: quality_<section>_*.csv; "
                                                    "'step_time...' times the Muon step against the AdamW step")
    p.add_argument("--recipes", default="", help="comma list, run in this order (see the docstring)")
    p.add_argument("--model", default="smollm2-135m", help="architecture preset, as train.py's --model")
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--micro_batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--warmup_fraction", type=float, default=0.1,
                   help="warmup share of the steps for every recipe without _w (its committed sweeps ran 0.1)")
    p.add_argument("--eval_every", type=int, default=20)
    p.add_argument("--val_windows", type=int, default=64)
    p.add_argument("--timed", type=int, default=20, help="step_time: timed steps per optimizer")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out_dir", default=os.path.join("results", "bench"))
    p.add_argument("--work_dir", default=os.path.join("runs", "quality"),
                   help="the train.py runs' folders, <work_dir>/<section>/<recipe> (each replaced when run again)")
    p.add_argument("--cache_dir", default="/tmp/quality_cache", help="step_time: token cache for raw text input")
    p.add_argument("--replot", action="store_true", help="only redraw the plot and the time-to-loss table from the CSVs")
    return p.parse_args(argv)


def check_recipes(args) -> list[str]:
    """The sweep's recipe names, each parsed once before anything runs: a bad name, or a horizon --eval_every
    does not divide (its last held-out loss would not be its end), is refused in one line."""
    names = [r for r in args.recipes.split(",") if r]
    if not names:
        raise UsageError("--recipes is empty: name the recipes to run (see the docstring), or a step_time section")
    for k, name in enumerate(names):
        recipe = parse_recipe(name, next((n for n in names[:k] if n.startswith("adamw_")), None))
        n = recipe["steps"] or args.steps
        if n % args.eval_every:
            raise UsageError(f"{name} trains {n} steps, which --eval_every {args.eval_every} does not divide: its last "
                             f"held-out loss would not be its end; pick an --eval_every that divides it")
    return names


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.replot:
        replot(os.path.join(args.out_dir, f"quality_{args.section}"), args.section)
        return 0
    device = torch.device(args.device)
    card = device_name(device)
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"quality_{args.section}")
    if args.section.startswith("step_time"):
        torch._dynamo.config.recompile_limit = 64
        torch.backends.cuda.matmul.allow_tf32 = True  # what stays float32 (the optimizer's norms), as bench.py
        tokenizer = load_tokenizer(args.tokenizer_id, log=lambda m: None)
        dataset = load_training_data(args.input_file, tokenizer, args.cache_dir, log=print)
        print(f"{card} | torch {torch.__version__} | {dataset.description}", flush=True)
        step_time(args, TokenBatches(dataset, args.seq_len, args.seed), device, card,
                  on_row=lambda rows: write_csv(stem + ".csv", rows))
        return 0
    names = check_recipes(args)
    print(f"{card} | torch {torch.__version__} | {args.input_file}", flush=True)
    for suffix in ("_curves.csv", "_runs.csv"):
        if os.path.exists(stem + suffix):
            os.remove(stem + suffix)  # one sweep, one table: no rows of an earlier run beside this one's
    runs, best_adamw = [], None
    for name in names:
        run = train_recipe(parse_recipe(name, best_adamw), args)
        if run is None:
            continue
        run.update(section=args.section, card=card, torch=torch.__version__)
        runs.append(run)
        print(f"== {name}: final {run['final_val_loss']:.4f} | {run['ms_per_step']:.1f} ms/step | train {run['train_s']:.1f} s "
              f"| first step {run['first_step_s']} s", flush=True)
        append_rows(stem + "_curves.csv", CURVE_COLUMNS,
                    [dict(section=args.section, recipe=name, card=card, **pt) for pt in run["points"]])
        append_rows(stem + "_runs.csv", RUN_COLUMNS, [{k: (float(f"{v:.5g}") if isinstance(v, float) else v)
                                                      for k, v in run.items()}])
        adamw = [r for r in runs if r["optimizer"] == "adamw" and r["impl"] == "ours"]
        best_adamw = min(adamw, key=lambda r: r["final_val_loss"])["recipe"] if adamw else None
        ttl = ttl_rows(args.section, runs, card)
        if ttl:
            write_csv(stem + "_ttl.csv", ttl)
        try:
            plot(stem + ".png", args.section, runs)
        except ImportError as e:  # the plot can be redrawn anywhere from the CSVs: --replot
            print(f"no plot ({e}); run --replot where matplotlib is installed", flush=True)
    return 0 if len(runs) == len(names) else 1


def replot(stem: str, section: str) -> None:
    """The plot and the time-to-loss table again from <stem>_runs.csv and <stem>_curves.csv (no GPU)."""
    with open(stem + "_runs.csv", encoding="utf-8") as f:
        runs = list(csv.DictReader(f))
    with open(stem + "_curves.csv", encoding="utf-8") as f:
        curves = list(csv.DictReader(f))
    for r in runs:
        r["points"] = [{k: float(p[k]) for k in ("step", "tokens", "train_s", "val_loss")}
                       for p in curves if p["recipe"] == r["recipe"]]
        # the curve's last point at full precision (the runs table rounds it)
        r["final_val_loss"], r["train_s"] = r["points"][-1]["val_loss"], float(r["train_s"])
    write_csv(stem + "_ttl.csv", ttl_rows(section, runs, runs[0]["card"]))
    plot(stem + ".png", section, runs)


if __name__ == "__main__":
    run_cli(main, "quality.py")
