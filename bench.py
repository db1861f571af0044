"""Training-speed benchmark: our SmolLM2 against transformers' LlamaForCausalLM, in one process on one GPU,
with the same initial weights, data, batch, optimizer and training step (smollm2.training.TrainStep).

    python bench.py --profile seed         # seq 256 x micro-batch 1 x accum 4 (the seed's shape)
    python bench.py --profile throughput   # seq 2048 x micro-batch 16, no accumulation
    python bench.py --profile all --max_batch_probe 1 --loss_steps 200
    python bench.py --profile attention    # SDPA kernels alone: flash vs cuDNN vs efficient, GQA native vs copied
    python bench.py --profile throughput --impls ours_compile --kernel_table 1   # where the time goes
    python bench.py --profile seed --impls ours_fast_accum,ours_fast --kernel_table 1   # micro-batches accumulated vs stacked
    python bench.py --world_sizes 1,2,4 --impls ours_compile   # data-parallel scaling through torchrun + DDP
    python bench.py --profile throughput --impls hf_compile,ours_fast --micro_batches 16,24,32,48
        # each impl at each micro-batch (microbatch_sweep.csv); bench_throughput.csv gets each impl's best that fits
    python bench.py --profile none --residual_loss_steps 200   # loss curves, residual stream fp32 vs bf16

Writes results/bench/bench_<profile>.csv and .json (tokens/s, ms/step, MFU against the card's dense bf16
peak, peak memory, card, versions), bench_max_batch.csv, bench_attention.csv, time_breakdown_<profile>.csv
(+ kernels_<profile>_<impl>.txt), multigpu_<profile>.csv, microbatch_sweep.csv, the loss-equivalence plot and
loss_residual.csv/.json/.png.
Under torchrun (WORLD_SIZE > 1) every rank trains its share through DDP and rank 0 writes total and
per-GPU figures.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import glob
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

from smollm2 import parallel
from smollm2_config import get_config
from smollm2.data import TokenBatches, load_training_data
from smollm2_model import SmolLM2ForCausalLM, repeat_kv
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID, load_tokenizer
from smollm2.switches import DDP_ONLY, DEFAULT_PATH, IMPLS, PROFILES, Switches
from smollm2.training import TransformersAdapter, build_train_step, lr_at, set_lr
from smollm2.io import merge_table, write_table
from smollm2.common import OneLineParser, UsageError, cuda_median_ms, device_name, flops_per_token, peak_flops, run_cli

DEFAULT_IMPLS = f"hf_eager,hf_compile,ours_eager,ours_compile,ours_fast_accum,ours_fast,{DEFAULT_PATH}"
MODEL_PRESET = "smollm2-135m"  # what every impl builds (CPU tests of the curve plumbing swap in "tiny")
REPO_DIR = os.path.dirname(os.path.abspath(__file__))  # frames under it (the scripts, smollm2/) are ours


def build(sw: Switches, seed: int, device):
    torch.manual_seed(seed)
    ours = SmolLM2ForCausalLM(get_config(MODEL_PRESET, attn_impl=sw.attn, residual_dtype=sw.residual_dtype))
    if sw.model_impl == "ours":
        return ours.to(device)
    from smollm2.hf import to_hf_model  # same initial weights as ours
    hf = to_hf_model(ours)
    hf.config._attn_implementation = "sdpa"
    return TransformersAdapter(hf.to(device).train())


def make_step(sw: Switches, model, device, lr: float = 3e-4):
    if sw.fsdp:  # train.py's order: shard, then the optimizer over the shards, then compile
        parallel.apply_fsdp(model)
    step = build_train_step(model, sw, device, lr=lr, weight_decay=0.1, grad_clip=1.0,
                            log=print if parallel.rank() == 0 else None)
    return step, step.optimizer


def release_memory_and_compiled_graphs():
    """Between impls: free what the last one held and forget its compiled graphs, so each impl compiles
    afresh (and never hits dynamo's recompile limit) and peak memory is its own."""
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_report(snapshot: dict, device_index: int, top: int = 25) -> str:
    """The allocations alive at the moment of peak allocated memory, grouped by the Python line that made
    them (from torch.cuda.memory._snapshot() with history recorded since before the model was built)."""
    trace = snapshot["device_traces"][device_index]

    def replay(stop=None):
        live, total, best, best_i = {}, 0, -1, -1
        for i, e in enumerate(trace[:stop]):
            if e["action"] == "alloc":
                live[e["addr"]] = e
                total += e["size"]
            elif e["action"] == "free_requested" and e["addr"] in live:
                total -= live.pop(e["addr"])["size"]
            if total > best:
                best, best_i = total, i
        return live, best, best_i

    _, best, best_i = replay()
    live, _, _ = replay(best_i + 1)
    sites: dict[str, list] = {}
    for e in live.values():
        frames = [f for f in e.get("frames", []) if f.get("filename", "").endswith(".py")]
        ours = [f for f in frames if os.path.abspath(f["filename"]).startswith(REPO_DIR + os.sep)]
        f = (ours or frames or [{"filename": "(no Python frame: autograd's backward thread or C++)", "line": 0,
                                 "name": ""}])[0]
        key = f"{os.path.basename(f['filename'])}:{f['line']} {f['name']}"
        sites.setdefault(key, [0, 0])
        sites[key][0] += e["size"]
        sites[key][1] += 1
    lines = [f"peak allocated during recording: {best / 1e9:.3f} GB (event {best_i} of {len(trace)}); "
             f"live blocks by allocating line (the innermost frame in this repo):"]
    for key, (size, n) in sorted(sites.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"{size / 1e6:10.1f} MB  {n:6d} blocks  {key}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def memory_history(enabled: bool):
    """Record every CUDA allocation with its Python stack while enabled (for peak_report); always switched off."""
    if not enabled:
        yield
        return
    torch.cuda.memory._record_memory_history(max_entries=2_000_000, context="alloc", stacks="python")
    try:
        yield
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)


def time_impl(impl, data, seq_len, B, A, warmup, steps, device, seed, kernel_table: str = "",
              memory_report: str = ""):
    """Warm up (compile, capture), then time `steps` steps between two CUDA events. Under DDP each rank
    takes its share of every step's micro-batches; the slowest rank's time counts."""
    release_memory_and_compiled_graphs()
    with memory_history(bool(memory_report)):
        return _time_impl(impl, data, seq_len, B, A, warmup, steps, device, seed, kernel_table, memory_report)


def _time_impl(impl, data, seq_len, B, A, warmup, steps, device, seed, kernel_table, memory_report):
    rank = parallel.rank()
    model = build(IMPLS[impl], seed, device)
    step_fn, opt = make_step(IMPLS[impl], model, device)
    t0 = time.perf_counter()
    for s in range(1, warmup + 1):
        step_fn(*data.step_batch(s, A, B, device, rank))
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    inputs = [data.step_batch(warmup + s, A, B, device, rank) for s in range(1, steps + 1)]
    torch.cuda.synchronize()
    parallel.barrier()  # all ranks start the timed steps together
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for xs, ys in inputs:
        loss, _ = step_fn(xs, ys)
    end.record()
    torch.cuda.synchronize()
    ms = parallel.max_across_ranks(start.elapsed_time(end) / steps)
    peak = parallel.max_across_ranks(torch.cuda.max_memory_allocated(device))
    final_loss = float(loss)
    breakdown = kernel_breakdown(step_fn, inputs[:3], kernel_table) if kernel_table else None
    if memory_report:
        with open(memory_report, "w") as f:
            f.write(f"{impl}: max_memory_allocated {peak / 1e9:.3f} GB\n")
            f.write(peak_report(torch.cuda.memory._snapshot(), device.index or 0))
    del model, step_fn, opt, inputs
    release_memory_and_compiled_graphs()
    return dict(ms_per_step=ms, warmup_s=warm_s, peak_mem_bytes=peak, final_loss=final_loss, breakdown=breakdown)


# Kernel name -> where the time goes. Order matters: the first pattern that matches wins.
KERNEL_GROUPS = [
    ("attention", r"flash|fmha|cudnn|attention|sdpa"),
    ("optimizer", r"adam|multi_tensor|foreach|norm_kernel|clip"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|matmul|sm90_|wgmma"),
    ("loss", r"logsumexp|log_softmax|cross_entropy|nll"),  # before embedding: the loss kernel does a scatter_add
    ("embedding", r"embedding|index|scatter|gather|sort|radix"),
    ("fused elementwise (triton)", r"^triton|triton_"),
    ("elementwise (eager)", r"elementwise|vectorized|reduce|copy|fill|cat"),
]


def kernel_breakdown(step_fn, inputs, table_path: str) -> dict:
    """Profile a few steps; write the top kernels as a table and return kernels per step and device ms per
    step per group (a CUDA graph's kernels are in the device trace like any others)."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for xs, ys in inputs:
            step_fn(xs, ys)
        torch.cuda.synchronize()
    averages = prof.key_averages()
    kernels = ([e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA]
               or [e for e in averages if e.self_device_time_total > 0])
    groups = {name: 0.0 for name, _ in KERNEL_GROUPS}
    groups["other"] = 0.0
    per_step = sum(e.count for e in kernels) / len(inputs)
    for e in kernels:
        name = next((g for g, pat in KERNEL_GROUPS if re.search(pat, e.key, re.I)), "other")
        groups[name] += e.self_device_time_total / 1000.0 / len(inputs)  # us -> ms per step
    with open(table_path, "w") as f:
        f.write(averages.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=90))
    return {"kernels_per_step": round(per_step), **{f"{k} ms": round(v, 2) for k, v in groups.items()}}


def loss_curves(data, seq_len, B, steps, device, seed, out_dir, fast_impl: str = "ours_fast"):
    """Per-step losses of the plain eager path and the fast path from the same seed and batches, plus the
    plain path in float32 as the yardstick: |bf16 eager - float32| is how far bf16 rounding alone moves
    the curve, the noise that |fast - bf16 eager| is read against. The float32 run takes each batch as
    two micro-batches of B/2 rows (the same mean loss and gradient) so that it fits where bf16 does."""
    runs = (("ours_eager_fp32", 2 if B % 2 == 0 else 1), ("ours_eager", 1), (fast_impl, 1))
    curves = {impl: train_curve(impl, data, B, steps, device, seed, split) for impl, split in runs}
    ref, eager, fast = curves["ours_eager_fp32"], curves["ours_eager"], curves[fast_impl]
    diffs = [abs(a - b) for a, b in zip(eager, fast)]
    noise = [abs(a - b) for a, b in zip(eager, ref)]
    write_curves(out_dir, "loss_equivalence", {"ours_eager": eager, "ours_fast": fast, "abs_diff": diffs,
                                               "ours_eager_fp32": ref, "bf16_noise": noise},
                 f"Loss equivalence, seq {seq_len} x micro-batch {B}, {device_name(device)}",
                 [(ref, dict(label="plain eager, float32 (TF32 matmuls)", lw=2.5, alpha=0.4, color="gray")),
                  (eager, dict(label="plain eager (bf16 autocast)", lw=1.5)),
                  (fast, dict(label="fast path (compile + CUDA graph + fused loss)", lw=1.0, ls="--"))])
    return {"steps": steps, "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs),
            "final_eager": eager[-1], "final_fast": fast[-1], "final_fp32": ref[-1],
            "max_bf16_noise": max(noise), "mean_bf16_noise": sum(noise) / len(noise)}


def write_curves(out_dir: str, stem: str, columns: dict[str, list[float]], title: str, lines: list) -> None:
    """<stem>.csv: step, then each column at 5 decimals; <stem>.png: the (curve, plot style) pairs of `lines`."""
    with open(os.path.join(out_dir, stem + ".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *columns])
        for i, row in enumerate(zip(*columns.values()), 1):
            w.writerow([i] + [f"{v:.5f}" for v in row])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    for curve, style in lines:
        ax.plot(range(1, len(curve) + 1), curve, **style)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, stem + ".png"), metadata={"Software": None})
    plt.close(fig)


def train_curve(impl, data, B, steps, device, seed, split: int = 1) -> list[float]:
    """Per-step losses of `steps` steps of one impl from `seed` on the data's batches 1..steps, warmup 20 steps
    then cosine (train.py's schedule). split > 1 takes each batch as that many micro-batches of B/split rows."""
    release_memory_and_compiled_graphs()
    model = build(IMPLS[impl], seed, device)
    step_fn, opt = make_step(IMPLS[impl], model, device)
    losses = []
    for s in range(1, steps + 1):
        set_lr(opt, lr_at(s, 20, steps, 3e-4, 3e-5))
        xs, ys = data.step_batch(s, 1, B, device)  # (1, B, T)
        loss, _ = step_fn(xs.view(split, B // split, -1), ys.view(split, B // split, -1))
        losses.append(loss.detach().clone())
    curve = torch.stack(losses).float().cpu().tolist()
    del model, step_fn, opt
    release_memory_and_compiled_graphs()
    return curve


def residual_loss_curves(data, seq_len, B, steps, device, seed, out_dir, fp32_impl: str = "ours_fast",
                         bf16_impl: str = "ours_fast_bf16res") -> dict:
    """The residual stream in float32 against bf16, same seed and batches, plus the float32-residual run
    again: |run - rerun| is the run-to-run noise of non-deterministic kernels, the floor the bf16 gap is
    read against (the larger yardstick, bf16 against float32 arithmetic, is loss_equivalence.json's)."""
    a = train_curve(fp32_impl, data, B, steps, device, seed)
    b = train_curve(bf16_impl, data, B, steps, device, seed)
    again = train_curve(fp32_impl, data, B, steps, device, seed)
    gap = [abs(x - y) for x, y in zip(a, b)]
    rerun = [abs(x - y) for x, y in zip(a, again)]
    write_curves(out_dir, "loss_residual", {"residual_fp32": a, "residual_bf16": b, "abs_diff": gap,
                                            "residual_fp32_rerun": again, "rerun_noise": rerun},
                 f"Residual stream dtype, seq {seq_len} x micro-batch {B}, {device_name(device)}",
                 [(a, dict(label=f"{fp32_impl}: residual stream float32", lw=1.5)),
                  (b, dict(label=f"{bf16_impl}: residual stream bf16", lw=1.0, ls="--"))])
    return {"steps": steps, "seq_len": seq_len, "micro_batch": B, "max_abs_diff": max(gap),
            "mean_abs_diff": sum(gap) / len(gap), "final_fp32_residual": a[-1], "final_bf16_residual": b[-1],
            "max_rerun_noise": max(rerun), "mean_rerun_noise": sum(rerun) / len(rerun)}


def sweep_micro_batches(impls, sizes, measure, on_row=lambda row: None) -> tuple[list[dict], list[dict]]:
    """Each impl at each micro-batch, in that order (one process, one card). measure(impl, B) returns a row
    dict with status "ok" or raises torch.OutOfMemoryError, which is recorded as an "oom" row (memory is
    freed before the next size). Returns (every row, each impl's fastest row that fit)."""
    rows, best = [], {}
    for impl in impls:
        for B in sizes:
            try:
                row = measure(impl, B)
            except torch.OutOfMemoryError:
                row = dict(impl=impl, micro_batch=B, status="oom")
            if row["status"] != "ok":
                release_memory_and_compiled_graphs()  # after the except block: the traceback no longer holds the failed run's tensors
            rows.append(row)
            on_row(row)
            if row["status"] == "ok" and row["tokens_per_s"] > best.get(impl, {}).get("tokens_per_s", -1):
                best[impl] = row
    return rows, [best[i] for i in impls if i in best]


def largest_fitting(fits, guess: int, known_ok: int, limit: int = 12) -> tuple[int, object, int]:
    """Largest B with fits(B) true, starting from a prediction: walk away from `guess` with a doubling stride
    (up while runs fit, down while they fail), then bisect between the last fit and the first failure.
    Returns (largest fit, first size that failed or None, trials)."""
    ok, bad, B, stride, trials = known_ok, None, guess, 1, 0
    while trials < limit:
        trials += 1
        if fits(B):
            ok = max(ok, B)
        else:
            bad = B if bad is None else min(bad, B)
        if bad is not None and bad - ok <= 1:
            break
        if bad is None:  # everything so far fits: walk up
            B, stride = ok + stride, stride * 2
        elif ok == known_ok and bad - stride > known_ok:  # the prediction was too high: walk down
            B, stride = bad - stride, stride * 2
        else:
            B = (ok + bad) // 2
    return ok, bad, trials


def probe_max_batch(impl, data, seq_len, device, seed) -> dict:
    """Largest micro-batch at seq_len whose training step fits: peak memory is close to linear in the
    micro-batch, so two small runs predict the limit and a few runs around the prediction confirm it
    (a size that fits and the next one that does not)."""
    def peak(B):
        try:
            got = time_impl(impl, data, seq_len, B, 1, 2, 1, device, seed)["peak_mem_bytes"]
        except torch.OutOfMemoryError:
            release_memory_and_compiled_graphs()
            got = None
        print(f"probe {impl} B={B}: " + (f"fits, peak {got / 1e9:.2f} GB" if got else "out of memory"), flush=True)
        return got

    p4, p8 = peak(4), peak(8)
    if p4 is None or p8 is None:
        return dict(max_micro_batch=0 if p4 is None else 4, first_oom=4 if p4 is None else 8, predicted="", trials=2)
    total = torch.cuda.get_device_properties(device).total_memory
    guess = max(8, int((total - p4) / ((p8 - p4) / 4)) + 4)
    ok, bad, trials = largest_fitting(lambda B: peak(B) is not None, guess, 8)
    return dict(max_micro_batch=ok, first_oom=bad or "", predicted=guess, trials=trials + 2,
                peak_gb_at_4=round(p4 / 1e9, 2), peak_gb_at_8=round(p8 / 1e9, 2), card_memory_gb=round(total / 1e9, 1))


def attention_bench(device, B=16, H=9, KV=3, T=2048, D=64, reps=20) -> list[dict]:
    """fwd+bwd of causal attention at the model's shape, per SDPA backend, with native GQA (3 K/V heads
    serve 9 query heads) or K/V copied to 9 heads first. Error against float32 math on the same inputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, H, T, D, device=device, generator=g)
    k = torch.randn(B, KV, T, D, device=device, generator=g)
    v = torch.randn(B, KV, T, D, device=device, generator=g)
    dout = torch.randn(B, H, T, D, device=device, generator=g)

    def run(qq, kk, vv, gqa):
        return F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=gqa)

    dout_b = dout.bfloat16()
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        ref = run(qr[:2], kr[:2], vr[:2], True)
    ref.backward(dout[:2])
    flops = 4 * B * H * T * T * D / 2 * 3.5  # causal: half the scores; backward ~2.5x the forward
    rows = []
    for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        for gqa in ("native", "copied_kv"):
            qb = q.bfloat16().requires_grad_()
            kb, vb = k.bfloat16(), v.bfloat16()
            if gqa == "copied_kv":
                kb, vb = repeat_kv(kb, H // KV), repeat_kv(vb, H // KV)
            kb, vb = kb.requires_grad_(), vb.requires_grad_()
            row = dict(backend=backend.replace("_ATTENTION", "").lower(), gqa=gqa, shape=f"{B}x{H}/{KV}x{T}x{D}",
                       card=device_name(device), torch=torch.__version__)
            try:
                with sdpa_kernel(getattr(SDPBackend, backend)):
                    def step():
                        out = run(qb, kb, vb, gqa == "native")
                        out.backward(dout_b)
                        return out
                    out = step()
                    err = ((out[:2].float() - ref).norm() / ref.norm()).item()
                    gerr = ((qb.grad[:2].float() - qr.grad[:2]).norm() / qr.grad[:2].norm()).item()
                    ms = cuda_median_ms(step, reps)
                row.update(status="ok", ms_fwd_bwd=round(ms, 3), tflops=round(flops / ms / 1e9, 1),
                           rel_err_out=f"{err:.2e}", rel_err_dq=f"{gerr:.2e}")
            except Exception as e:  # a backend that refuses this shape says so in the row
                row.update(status="unsupported", error=str(e).splitlines()[0][:160])
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def with_ratios(rows: list[dict]) -> None:
    """x_hf_eager / x_hf_compile of every row: its tokens/s over that transformers row's (each at its own
    micro-batch when the table holds each impl's best)."""
    base = {r["impl"]: r["tokens_per_s"] for r in rows if r["status"] == "ok"}
    for r in rows:
        ok = r["status"] == "ok"
        r["x_hf_eager"] = round(r["tokens_per_s"] / base["hf_eager"], 2) if ok and "hf_eager" in base else ""
        r["x_hf_compile"] = round(r["tokens_per_s"] / base["hf_compile"], 2) if ok and "hf_compile" in base else ""


def kept_rows(path_stem, impls, card) -> list[dict]:
    """The rows of <path_stem>.json that a run of `impls` on `card` leaves in place: other impls, same card."""
    if not os.path.exists(path_stem + ".json"):
        return []
    with open(path_stem + ".json") as f:
        return [r for r in json.load(f) if r["impl"] not in impls and r.get("card") == card]


def multigpu(args, ids_ready_dir: str) -> None:
    """Run this script under torchrun for each (world size, impl) and collect total and per-GPU figures.
    Each pair is its own run, kept in <out_dir>/.multigpu/w<N>/<impl>/: a rerun skips pairs already measured,
    a failed pair is reported and the rest go on, and the table is rewritten after every pair."""
    sizes = [int(w) for w in args.world_sizes.split(",")]
    impls = args.impls.split(",")
    if max(sizes) > torch.cuda.device_count():
        raise UsageError(f"--world_sizes asks for {max(sizes)} GPUs, this machine has {torch.cuda.device_count()}")
    if graphs := [i for i in impls if IMPLS[i].cuda_graph]:
        raise UsageError(f"CUDA-graph impls are single-process only: drop {', '.join(graphs)} from --impls")
    failed = []
    for n in sizes:
        for impl in impls:
            if n == 1 and impl in DDP_ONLY:
                continue  # differs from its base only under DDP: the base's one-GPU row serves
            out = os.path.join(args.out_dir, ".multigpu", f"w{n}", impl)
            if os.path.exists(os.path.join(out, f"bench_{args.profile}.json")):
                print(f"skip {impl} x{n}: measured in {out}", flush=True)
                continue
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   os.path.abspath(__file__), "--profile", args.profile, "--impls", impl, "--out_dir", out,
                   "--cache_dir", ids_ready_dir, "--input_file", args.input_file, "--tokenizer_id", args.tokenizer_id,
                   "--warmup", str(args.warmup), "--steps", str(args.steps), "--seed", str(args.seed)]
            if args.micro_batch:
                cmd += ["--micro_batch", str(args.micro_batch)]
            print("$ " + " ".join(cmd), flush=True)
            if subprocess.run(cmd).returncode != 0:
                failed.append(f"{impl} x{n}")
                print(f"FAILED: {impl} on {n} processes (its output is above); going on", flush=True)
            rows = collect_multigpu(args.out_dir, args.profile)
            if rows:
                write_table(os.path.join(args.out_dir, f"multigpu_{args.profile}"), rows)
    for r in collect_multigpu(args.out_dir, args.profile):
        print(f"{r['impl']:>24} x{r['world_size']}: {r['tokens_per_s']:>10,.0f} tok/s total | "
              f"{r['tokens_per_s_per_gpu']:>9,.0f} per GPU | efficiency {r['scaling_efficiency']}")
    if failed:
        raise UsageError(f"failed: {', '.join(failed)}")


def collect_multigpu(out_dir: str, profile: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(out_dir, ".multigpu", "w*", "*", f"bench_{profile}.json"))):
        with open(path) as f:
            rows += json.load(f)
    rows.sort(key=lambda r: (list(IMPLS).index(r["impl"]) if r["impl"] in IMPLS else 99, r["world_size"]))
    one = {r["impl"]: r["tokens_per_s_per_gpu"] for r in rows if r["world_size"] == 1 and r["status"] == "ok"}
    for r in rows:
        base = one.get(r["impl"]) or one.get(DDP_ONLY.get(r["impl"], ""))
        r["scaling_efficiency"] = round(r["tokens_per_s_per_gpu"] / base, 3) if base and r["status"] == "ok" else ""
        for k in ("x_hf_eager", "x_hf_compile"):
            r.pop(k, None)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="all", choices=[*PROFILES, "all", "attention", "none"],
                   help="none: only --max_batch_probe / --loss_steps")
    p.add_argument("--impls", default=DEFAULT_IMPLS, help="comma list of " + ", ".join(IMPLS))
    p.add_argument("--input_file", default="input.txt")
    p.add_argument("--tokenizer_id", default=DEFAULT_TOKENIZER_ID)
    p.add_argument("--micro_batch", type=int, default=0, help="override the profile's micro-batch")
    p.add_argument("--micro_batches", default="",
                   help="e.g. 16,24,32,48: every impl at each micro-batch (microbatch_sweep.csv, out-of-memory recorded "
                        "as such); bench_<profile>.csv takes each impl's fastest size that fit")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps (compile, graph capture)")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--kernel_table", type=int, default=0, choices=[0, 1],
                   help="profile 3 steps per impl: kernels_<profile>_<impl>.txt and time_breakdown_<profile>.csv")
    p.add_argument("--memory_peak", type=int, default=0, choices=[0, 1],
                   help="record allocations per impl: memory_peak_<profile>_<impl>.txt lists what is alive at the peak")
    p.add_argument("--max_batch_probe", type=int, default=0, choices=[0, 1], help="largest micro-batch at seq 2048")
    p.add_argument("--probe_impls", default="hf_eager,hf_compile,ours_compile")
    p.add_argument("--loss_steps", type=int, default=0, help="steps of the fast-vs-eager loss comparison (0 = skip)")
    p.add_argument("--loss_batch", type=int, default=16, help="micro-batch of the loss comparison (seq 2048)")
    p.add_argument("--residual_loss_steps", type=int, default=0,
                   help="steps of the residual-stream comparison, ours_fast vs ours_fast_bf16res (0 = skip)")
    p.add_argument("--world_sizes", default="", help="e.g. 1,2,4: run --profile under torchrun at each size")
    p.add_argument("--out_dir", default=os.path.join("results", "bench"))
    p.add_argument("--cache_dir", default="", help="token cache (default <out_dir>/.cache)")
    return p.parse_args(argv)


def check_args(args) -> tuple[list[str], list[str], list[int]]:
    """Every flag, before the GPU is touched: (impls, probe impls, micro-batch sizes of a sweep)."""
    impls = args.impls.split(",")
    if not all(b.strip().isdigit() and int(b) >= 1 for b in args.micro_batches.split(",") if args.micro_batches):
        raise UsageError(f"--micro_batches takes sizes such as 16,24,32,48, got {args.micro_batches!r}")
    sizes = [int(b) for b in args.micro_batches.split(",")] if args.micro_batches else []
    if sizes and (args.profile not in PROFILES or args.world_sizes or args.kernel_table or args.memory_peak):
        raise UsageError("--micro_batches sweeps one profile (seed or throughput) in one process: no --world_sizes, "
                         "--kernel_table or --memory_peak with it")
    probe_impls = args.probe_impls.split(",")
    if unknown := [i for i in impls + probe_impls if i not in IMPLS]:
        raise UsageError(f"unknown impl {unknown}; choose from {', '.join(IMPLS)}")
    if args.world_sizes and args.profile not in PROFILES:
        raise UsageError("--world_sizes needs --profile seed or throughput")
    if args.world_sizes and not all(w.strip().isdigit() and int(w) >= 1 for w in args.world_sizes.split(",")):
        raise UsageError(f"--world_sizes takes process counts such as 1,2,4, got {args.world_sizes!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (args.kernel_table or args.memory_peak or args.max_batch_probe
                                                      or args.loss_steps or args.residual_loss_steps
                                                      or any(IMPLS[i].cuda_graph for i in impls)):
        raise UsageError("under torchrun bench.py times plain DDP steps only: no --kernel_table, --memory_peak, "
                         "--max_batch_probe, --loss_steps or CUDA-graph impls")
    if (sharded := [i for i in impls if IMPLS[i].fsdp]) and not (args.world_sizes or "WORLD_SIZE" in os.environ):
        raise UsageError(f"{', '.join(sharded)} shard the model with FSDP2 across torchrun's processes: "
                         f"time them with --world_sizes (e.g. 1,2,4,8)")
    if not torch.cuda.is_available():
        raise UsageError("bench.py measures GPU training speed and needs CUDA")
    return impls, probe_impls, sizes


@dataclass
class Bench:
    """What every measurement of one bench.py process shares."""
    args: argparse.Namespace
    device: torch.device
    world: int
    card: str
    peak: Optional[float]
    versions: dict
    write: bool  # rank 0 writes the tables

    def row(self, prof: str, impl: str, status: str, seq_len: int, B: int, A: int, **measured) -> dict:
        return dict(profile=prof, impl=impl, status=status, card=self.card, world_size=self.world, seq_len=seq_len,
                    micro_batch=B, grad_accum=A, tokens_per_step=B * A * seq_len * self.world, **measured,
                    peak_flops=self.peak or "", **self.versions)


def bench_profile(bench: Bench, prof: str, dataset, n_params: int, config, impls: list[str], sizes: list[int]) -> None:
    """Every impl at the profile's shape (or, with --micro_batches, at each size): bench_<prof>.csv/.json,
    microbatch_sweep.csv and time_breakdown_<prof>.csv."""
    args, world, peak = bench.args, bench.world, bench.peak
    shape = PROFILES[prof]
    seq_len, B, A = shape.seq_len, args.micro_batch or shape.micro_batch, shape.grad_accum
    data = TokenBatches(dataset, seq_len, args.seed, "random")
    flops_per_tok = flops_per_token(n_params, config.num_hidden_layers, config.hidden_size, seq_len)
    rows, breakdown = [], []

    def measure(impl, B, table="", mem=""):
        r = time_impl(impl, data, seq_len, B, A, args.warmup, args.steps, bench.device, args.seed, table, mem)
        tok_s = B * A * seq_len * world * 1000.0 / r["ms_per_step"]
        if r["breakdown"]:
            breakdown.append(dict(impl=impl, card=bench.card, ms_per_step=round(r["ms_per_step"], 2), **r["breakdown"]))
        # key order as the committed tables have it: the measured columns between tokens_per_step and peak_flops
        return bench.row(prof, impl, "ok", seq_len, B, A, ms_per_step=round(r["ms_per_step"], 3),
                         tokens_per_s=round(tok_s, 1), tokens_per_s_per_gpu=round(tok_s / world, 1),
                         mfu=round(tok_s * flops_per_tok / (peak * world), 4) if peak else "",
                         peak_mem_gb=round(r["peak_mem_bytes"] / 1e9, 2), warmup_s=round(r["warmup_s"], 1),
                         final_loss=round(r["final_loss"], 4))

    if sizes:  # every impl at every size; the profile's table gets each impl's fastest size that fit
        sweep = kept_rows(os.path.join(args.out_dir, "microbatch_sweep"), impls, bench.card)

        def on_row(row):
            sweep.append(row if row["status"] == "ok" else bench.row(prof, row["impl"], "oom", seq_len,
                                                                     row["micro_batch"], A))
            if bench.write:
                print(json.dumps(sweep[-1]), flush=True)
                write_table(os.path.join(args.out_dir, "microbatch_sweep"), sweep)  # kept if the run is cut

        _, rows = sweep_micro_batches(impls, sizes, measure, on_row)
    for impl in ([] if sizes else impls):
        stacked_twin = [o for o in impls if o != impl and IMPLS[o] == IMPLS[impl].but(stack_micro=-1)]
        if A == 1 and stacked_twin:
            print(f"skip {impl}: with one micro-batch per step it is the same step as {stacked_twin[0]}", flush=True)
            continue
        table = os.path.join(args.out_dir, f"kernels_{prof}_{impl}.txt") if args.kernel_table and bench.write else ""
        mem = os.path.join(args.out_dir, f"memory_peak_{prof}_{impl}.txt") if args.memory_peak and bench.write else ""
        try:
            rows.append(measure(impl, B, table, mem))
        except torch.OutOfMemoryError:
            rows.append(bench.row(prof, impl, "oom", seq_len, B, A))
        if rows[-1]["status"] == "oom":
            release_memory_and_compiled_graphs()
        if bench.write:
            print(json.dumps(rows[-1]), flush=True)
    stem = os.path.join(args.out_dir, f"bench_{prof}")
    # The impls measured now replace their rows; the other rows stay if they were measured on this card (a
    # partial rerun keeps the rest of the table; the ratios are against the hf rows present, so rerun those too).
    rows = kept_rows(stem, impls, bench.card) + rows
    with_ratios(rows)
    if bench.write:
        write_table(stem, rows)
        if breakdown:
            write_table(os.path.join(args.out_dir, f"time_breakdown_{prof}"), breakdown)


def bench_extras(bench: Bench, dataset, probe_impls: list[str]) -> None:
    """At seq 2048: the largest micro-batch per impl, and the two loss-curve comparisons."""
    args, device = bench.args, bench.device
    data = TokenBatches(dataset, 2048, args.seed, "random")
    if args.max_batch_probe:
        for impl in probe_impls:  # each impl's row is saved as soon as it is known
            row = dict(impl=impl, card=bench.card, seq_len=2048, **probe_max_batch(impl, data, 2048, device, args.seed),
                       **bench.versions)
            print(json.dumps(row), flush=True)
            merge_table(os.path.join(args.out_dir, "bench_max_batch"), [row], key=lambda r: r["impl"])
    for steps, run, name in ((args.loss_steps, loss_curves, "loss_equivalence.json"),
                             (args.residual_loss_steps, residual_loss_curves, "loss_residual.json")):
        if steps:
            summary = run(data, 2048, args.loss_batch, steps, device, args.seed, args.out_dir)
            summary.update(card=bench.card, **bench.versions)
            with open(os.path.join(args.out_dir, name), "w") as f:
                json.dump(summary, f, indent=2)
            print(summary)


def main(argv=None):
    # ---- parse and check
    args = parse_args(argv)
    impls, probe_impls, sizes = check_args(args)
    # ---- the card, the data
    os.makedirs(args.out_dir, exist_ok=True)
    cache_dir = args.cache_dir or os.path.join(args.out_dir, ".cache")
    env = parallel.setup("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True  # only what stays in float32 (the optimizer's grad norm etc.)
    card = device_name(env.device)
    import transformers
    bench = Bench(args, env.device, env.world_size, card, peak_flops(card),
                  {"torch": torch.__version__, "transformers": transformers.__version__}, write=env.rank == 0)
    if args.profile == "attention":
        write_table(os.path.join(args.out_dir, "bench_attention"), attention_bench(env.device))
        return
    tokenizer = load_tokenizer(args.tokenizer_id)
    dataset = load_training_data(args.input_file, tokenizer, cache_dir, val_fraction=0.0)
    if args.world_sizes:
        return multigpu(args, cache_dir)
    # ---- the measurements
    config = get_config("smollm2-135m")
    n_params = SmolLM2ForCausalLM(config).num_params()
    for prof in list(PROFILES) if args.profile == "all" else [args.profile] if args.profile in PROFILES else []:
        bench_profile(bench, prof, dataset, n_params, config, impls, sizes)
    if bench.write:
        bench_extras(bench, dataset, probe_impls)
    parallel.teardown()


if __name__ == "__main__":
    run_cli(main, "bench.py")
