"""Training-speed benchmark: our SmolLM2 against transformers' LlamaForCausalLM, in one process on one GPU,
with the same initial weights, data, batch, optimizer and training step (smollm2_training.TrainStep).

    python bench.py --profile seed         # seq 256 x micro-batch 1 x accum 4 (the seed's run)
    python bench.py --profile throughput   # seq 2048 x micro-batch 16, no accumulation
    python bench.py --profile all --max_batch_probe 1 --loss_steps 200

Writes benchmarks/bench_<profile>.csv and .json (tokens/s, ms/step, MFU against the card's dense bf16
peak, peak memory, card, versions), benchmarks/bench_max_batch.csv and the loss-equivalence plot.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import sys
import time

import torch

from smollm2_config import get_config
from smollm2_data import TokenBatches, load_token_ids
from smollm2_model import SmolLM2ForCausalLM
from smollm2_tokenizer import DEFAULT_TOKENIZER_ID, load_tokenizer
from smollm2_training import (HFReference, StepConfig, TrainStep, UsageError, build_optimizer, device_name,
                              flops_per_token, lr_at, peak_flops, set_lr)

PROFILES = {  # name: (seq_len, micro_batch, grad_accum)
    "seed": (256, 1, 4),
    "throughput": (2048, 16, 1),
}
# impl: (model kind, compile, cuda graph, fused loss). Autocast bf16 for all: the dtype policy is shared.
IMPLS = {
    "hf_eager": ("hf", False, False, False),
    "hf_compile": ("hf", True, False, False),
    "ours_eager": ("ours", False, False, False),
    "ours_compile": ("ours", True, False, True),
    "ours_fast": ("ours", True, True, True),
}


def build(kind: str, seed: int, device, attn: str = "sdpa"):
    torch.manual_seed(seed)
    ours = SmolLM2ForCausalLM(get_config("smollm2-135m", attn_impl=attn))
    if kind == "ours":
        return ours.to(device)
    from smollm2_hf import to_hf_model  # same initial weights as ours
    hf = to_hf_model(ours)
    hf.config._attn_implementation = "sdpa"
    return HFReference(hf.to(device).train())


def make_step(impl: str, model, device, grad_accum: int, lr: float = 3e-4):
    kind, compile_, graph, fused = IMPLS[impl]
    opt = build_optimizer(model, lr, 0.1, device, capturable=graph)
    fwd = torch.compile(model) if compile_ else model
    return TrainStep(model, fwd, opt, StepConfig(grad_accum, 1.0, torch.bfloat16, fused, graph), device), opt


def free():
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def time_impl(impl, data, seq_len, B, A, warmup, steps, device, seed):
    free()
    model = build(IMPLS[impl][0], seed, device)
    step_fn, opt = make_step(impl, model, device, A)
    t0 = time.perf_counter()
    for s in range(1, warmup + 1):
        step_fn(*data.step_batch(s, A, B, device))
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    inputs = [data.step_batch(warmup + s, A, B, device) for s in range(1, steps + 1)]
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for xs, ys in inputs:
        loss, _ = step_fn(xs, ys)
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / steps
    peak = torch.cuda.max_memory_allocated(device)
    final_loss = float(loss)
    del model, step_fn, opt, inputs
    free()
    return dict(ms_per_step=ms, warmup_s=warm_s, peak_mem_bytes=peak, final_loss=final_loss)


def loss_curves(data, seq_len, B, steps, device, seed, out_dir):
    """Per-step losses of the plain eager path and the fast path from the same seed and batches."""
    curves = {}
    for impl in ("ours_eager", "ours_fast"):
        free()
        model = build("ours", seed, device)
        step_fn, opt = make_step(impl, model, device, 1)
        losses = []
        for s in range(1, steps + 1):
            set_lr(opt, lr_at(s, 20, steps, 3e-4, 3e-5))
            loss, _ = step_fn(*data.step_batch(s, 1, B, device))
            losses.append(loss.detach().clone())
        curves[impl] = torch.stack(losses).float().cpu().tolist()
        del model, step_fn, opt
    free()
    path = os.path.join(out_dir, "loss_equivalence.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "ours_eager", "ours_fast", "abs_diff"])
        for i, (a, b) in enumerate(zip(curves["ours_eager"], curves["ours_fast"]), 1):
            w.writerow([i, f"{a:.5f}", f"{b:.5f}", f"{abs(a - b):.5f}"])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    xs = range(1, steps + 1)
    ax.plot(xs, curves["ours_eager"], label="plain eager (bf16 autocast)", lw=1.5)
    ax.plot(xs, curves["ours_fast"], label="fast path (compile + CUDA graph + fused loss)", lw=1.0, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title(f"Loss equivalence, seq {seq_len} x micro-batch {B}, {device_name(device)}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "loss_equivalence.png"), metadata={"Software": None})
    plt.close(fig)
    diffs = [abs(a - b) for a, b in zip(curves["ours_eager"], curves["ours_fast"])]
    return {"steps": steps, "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs),
            "final_eager": curves["ours_eager"][-1], "final_fast": curves["ours_fast"][-1]}


def probe_max_batch(impl, data, seq_len, device, seed, candidates):
    best = 0
    for B in candidates:
        try:
            time_impl(impl, data, seq_len, B, 1, 2, 1, device, seed)
            best = B
        except torch.OutOfMemoryError:
            free()
            break
    return best


def write_rows(path_stem, rows):
    with open(path_stem + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    with open(path_stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="all", choices=["seed", "throughput", "all"])
    p.add_argument("--impls", default=",".join(IMPLS), help="comma list of " + ", ".join(IMPLS))
    p.add_argument("--input_file", default="input.txt")
    p.add_argument("--tokenizer_id", default=DEFAULT_TOKENIZER_ID)
    p.add_argument("--micro_batch", type=int, default=0, help="override the profile's micro-batch")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps (compile, graph capture)")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--max_batch_probe", type=int, default=0, choices=[0, 1], help="largest micro-batch at seq 2048")
    p.add_argument("--loss_steps", type=int, default=0, help="steps of the fast-vs-eager loss comparison (0 = skip)")
    p.add_argument("--loss_batch", type=int, default=16, help="micro-batch of the loss comparison (seq 2048)")
    p.add_argument("--out_dir", default="benchmarks")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise UsageError("bench.py measures GPU training speed and needs CUDA")
    impls = args.impls.split(",")
    if unknown := [i for i in impls if i not in IMPLS]:
        raise UsageError(f"unknown --impls {unknown}; choose from {', '.join(IMPLS)}")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True  # only what stays in float32 (the optimizer's grad norm etc.)
    os.makedirs(args.out_dir, exist_ok=True)
    card = device_name(device)
    peak = peak_flops(card)
    import transformers
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    tokenizer = load_tokenizer(args.tokenizer_id)
    ids = load_token_ids(args.input_file, tokenizer, os.path.join(args.out_dir, ".cache"))
    n_params = SmolLM2ForCausalLM(get_config("smollm2-135m")).num_params()

    profiles = list(PROFILES) if args.profile == "all" else [args.profile]
    for prof in profiles:
        seq_len, B, A = PROFILES[prof]
        B = args.micro_batch or B
        data = TokenBatches(ids, seq_len, 0.0, args.seed)
        fpt = flops_per_token(n_params, 30, 576, seq_len)
        rows = []
        for impl in impls:
            try:
                r = time_impl(impl, data, seq_len, B, A, args.warmup, args.steps, device, args.seed)
                status = "ok"
            except torch.OutOfMemoryError:
                free()
                r, status = dict(ms_per_step=float("nan"), warmup_s=float("nan"), peak_mem_bytes=0,
                                 final_loss=float("nan")), "oom"
            tok_s = B * A * seq_len * 1000.0 / r["ms_per_step"]
            rows.append(dict(profile=prof, impl=impl, status=status, card=card, seq_len=seq_len, micro_batch=B,
                             grad_accum=A, tokens_per_step=B * A * seq_len, ms_per_step=round(r["ms_per_step"], 3),
                             tokens_per_s=round(tok_s, 1), mfu=round(tok_s * fpt / peak, 4) if peak else "",
                             peak_mem_gb=round(r["peak_mem_bytes"] / 1e9, 2), warmup_s=round(r["warmup_s"], 1),
                             final_loss=round(r["final_loss"], 4), peak_flops=peak or "", **versions))
            print(json.dumps(rows[-1]), flush=True)
        base = {r["impl"]: r["tokens_per_s"] for r in rows}
        for r in rows:
            r["x_hf_eager"] = round(r["tokens_per_s"] / base["hf_eager"], 2) if "hf_eager" in base else ""
            r["x_hf_compile"] = round(r["tokens_per_s"] / base["hf_compile"], 2) if "hf_compile" in base else ""
        write_rows(os.path.join(args.out_dir, f"bench_{prof}"), rows)

    if args.max_batch_probe:
        data = TokenBatches(ids, 2048, 0.0, args.seed)
        cands = [8, 16, 24, 32, 48, 64, 96, 128]
        rows = [dict(impl=i, card=card, seq_len=2048, max_micro_batch=probe_max_batch(i, data, 2048, device, args.seed, cands),
                     candidates=" ".join(map(str, cands)), **versions) for i in ("hf_eager", "ours_eager", "ours_compile")]
        print(rows)
        write_rows(os.path.join(args.out_dir, "bench_max_batch"), rows)

    if args.loss_steps:
        data = TokenBatches(ids, 2048, 0.0, args.seed)
        summary = loss_curves(data, 2048, args.loss_batch, args.loss_steps, device, args.seed, args.out_dir)
        summary.update(card=card, **versions)
        with open(os.path.join(args.out_dir, "loss_equivalence.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(summary)


if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
