"""Train SmolLM2-135M from random initialisation, with checkpoints and bit-exact resume.

    python train.py --input_file input.txt --seq_len 256 --batch_size 1 --grad_accum 4 \
        --max_steps 5000 --resume 0 --log_every 50 --save_every 250 --sample_every 500
    python train.py ... --max_steps 5050 --resume 1      # continues 5001 -> 5050

One run per --out_dir (smollm2/run.py): a second run there exits 2, --resume 0 refuses a folder that
holds a run (--overwrite 1 replaces it), a resume refuses settings that would break exact continuation
(smollm2/run.py), and nothing non-finite is ever saved. Bad flags or inputs: one line, exit 2; a
non-finite loss or gradient, or a save that fails: exit 1, the latest checkpoint left as it was.

Several GPUs: torchrun --nproc_per_node=N train.py ...  (DDP; rank 0 logs and saves).

Read top to bottom: parse_and_check (every flag, declared in smollm2/options.py and checked here, worded as a
flag; the speed flags resolved into one Switches, logged beside the Args line as typed) -> prepare_run (the
folder and the resume point, smollm2/run.py) -> build_run (data, model, optimizer, step: smollm2.training's
train_step) -> train_loop (its saves, clock and stop flag: smollm2/loop.py) -> finish (DONE, WALL). Each
logged number goes to train.log for people and to metrics.jsonl for programs (smollm2/metrics.py).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from smollm2_config import PRESETS, get_config
from smollm2_model import SmolLM2ForCausalLM
from smollm2 import parallel
from smollm2.checkpoint import LATEST, set_rng_state
from smollm2.common import RunStopped, UsageError, device_name, flops_per_token, peak_flops, run_cli
from smollm2.data import TokenBatches, load_training_data
from smollm2.evaluation import TASKS, ByteCount, load_task_spec, score_items, token_byte_lengths
from smollm2.inference import DecodeGraph, generate
from smollm2.io import write_failure_advice
from smollm2.loop import Checkpoints, Interval, StopFlag, WallClock
from smollm2.metrics import METRICS_FILE, MetricsWriter, finite_or_none
from smollm2.muon import momentum_at, set_momentum
from smollm2.options import AUTO_MUON_MIN_TOKENS, build_parser
from smollm2.parallel import ARTIFACTS, load_artifacts, save_artifacts
from smollm2.prepare import eos_id_of
from smollm2.run import CACHE_DIR, CKPT_DIR, RUN_FILE, Logger, Start, check_resume, prepare_run
from smollm2.switches import Switches, auto_compile_scope
from smollm2.tokenizer import load_tokenizer
from smollm2.training import (EVAL_TOKENS, RECIPES, TrainStep, TransformersAdapter, accum_at, amp_context,
                              SEQ_WARMUP_MIN_START, build_train_step, evaluate, lr_at, micro_batches_before,
                              seq_len_at, set_lr, split_windows)


def parse_args(argv=None) -> argparse.Namespace:
    """The flags as typed (smollm2/options.py declares each), then --optimizer auto resolved and what the user left
    unset filled from the optimizer's recipe."""
    p = build_parser()
    args = p.parse_args(argv)
    auto = args.optimizer == "auto"
    if auto:  # resolved here: the log, the checkpoint and a resume see the optimizer itself
        tokens = args.batch_size * args.grad_accum * args.seq_len
        args.optimizer = "muon" if tokens >= AUTO_MUON_MIN_TOKENS and not args.fsdp else "adamw"
    # The Muon-only flags, each refused in one line when the run is AdamW
    muon_only = [
        (args.adamw_lr is not None,
         "--adamw_lr is the lr of the AdamW part of --optimizer muon; with --optimizer adamw use --max_lr"),
        (args.norm_lr is not None,
         "--norm_lr is the lr of the norm gains under --optimizer muon; with --optimizer adamw use --max_lr"),
        (args.muon_variant not in (None, "muon"),
         f"--muon_variant {args.muon_variant} changes --optimizer muon; this run uses --optimizer {args.optimizer}"),
        (bool(args.muon_momentum_warmup_steps),
         f"--muon_momentum_warmup_steps schedules Muon's momentum; this run uses --optimizer {args.optimizer}"),
    ]
    for given, message in muon_only:
        if given and args.optimizer != "muon":
            p.error(message + (f" (--optimizer auto chose adamw: fewer than {AUTO_MUON_MIN_TOKENS:,} tokens a step, "
                               "or --fsdp 1)" if auto else ""))
    for name, value in RECIPES[args.optimizer].items():  # what the user left unset comes from the recipe
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


# ================================================================================================ parse and check
def resolve_switches(args, device: torch.device, world: int) -> Switches:
    """The speed path the flags select: each -1 (auto) follows --fast on CUDA; --residual_dtype auto is
    bf16 with --fast and autocast; --compile_scope auto follows --max_steps (a resume then takes its run's,
    kept_compile_scope). `args` stays as typed (the log's Args line); this is logged beside it."""
    cuda = device.type == "cuda"
    auto = lambda v, default: bool(default) if v == -1 else bool(v)  # noqa: E731
    autocast = auto(args.autocast, cuda)
    residual = args.residual_dtype if args.residual_dtype != "auto" else "bf16" if args.fast and autocast else "fp32"
    scope = auto_compile_scope(args.max_steps, world) if args.compile_scope == "auto" else args.compile_scope
    return Switches(autocast=autocast, compile=auto(args.compile, args.fast and cuda), compile_scope=scope,
                    cuda_graph=auto(args.cuda_graph, args.fast and cuda and world == 1 and not args.fsdp),
                    fused_loss=auto(args.fused_loss, args.fast),
                    # a batch warmup accumulates its micro-batches: stacked, each stage would be a new shape to compile
                    stack_micro=0 if args.batch_warmup_steps and args.stack_micro == -1 else args.stack_micro,
                    residual_dtype=residual, attn=args.attn, model_impl=args.model_impl,
                    tie_word_embeddings=bool(args.tie_word_embeddings), grad_reduce_bf16=args.grad_reduce_dtype == "bf16",
                    fsdp=bool(args.fsdp), optimizer=args.optimizer)


def kept_compile_scope(args, switches: Switches, ckpt: Optional[dict]) -> Switches:
    """--compile_scope auto on a resume: the scope the saved run compiled with, whatever --max_steps is now
    (the same compiled code continues the run exactly; the step B of the README goes 5000 -> 5050 either way)."""
    saved = ((ckpt or {}).get("switches") or {}).get("compile_scope")
    if args.compile_scope != "auto" or saved not in parallel.COMPILE_SCOPES:
        return switches
    return switches.but(compile_scope=saved)


SEED_MAX = 2**63 - 1  # numpy's SeedSequence wants >= 0; torch.manual_seed(seed + step) stays below 2**64


def check_values(args) -> None:
    """Every numeric flag, before anything is read or written: finite and in range."""
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{name} must be a finite number, got {value}")
    for name in ["seq_len", "batch_size", "grad_accum", "max_steps", "log_every"]:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("warmup_steps", "muon_momentum_warmup_steps"):  # None: the run's default, filled later
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(args, name)}")
    for name in ["save_every", "lr_decay_steps", "val_every", "val_batches", "sample_every", "sample_tokens", "keep_checkpoints",
                 "task_every", "task_limit", "batch_warmup_steps", "seq_warmup_steps"]:
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.batch_warmup_steps and args.grad_accum == 1:
        raise UsageError("--batch_warmup_steps grows the batch from 1 micro-batch to --grad_accum a step; with "
                         "--grad_accum 1 there is nothing to grow: split the batch (e.g. --batch_size 8 "
                         "--grad_accum 2 for 16) or leave --batch_warmup_steps 0")
    if args.seq_warmup_steps:
        check_seq_warmup(args.seq_len, args.seq_warmup_start)
    if not (args.max_lr > 0 and 0 <= args.min_lr <= args.max_lr):
        raise UsageError(f"need 0 <= --min_lr <= --max_lr and --max_lr > 0 (got {args.min_lr}, {args.max_lr})")
    for name in ("adamw_lr", "norm_lr"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise UsageError(f"--{name} must be > 0, got {getattr(args, name)}")
    if not 0 < args.lr_decay_fraction <= 1:
        raise UsageError(f"--lr_decay_fraction must be in (0, 1], got {args.lr_decay_fraction}")
    if args.weight_decay < 0 or args.grad_clip < 0:
        raise UsageError("--weight_decay and --grad_clip must be >= 0")
    if not 0 <= args.val_fraction < 1:
        raise UsageError(f"--val_fraction must be in [0, 1), got {args.val_fraction}")
    if not 0 <= args.seed <= SEED_MAX:
        raise UsageError(f"--seed must be in [0, 2**63 - 1], got {args.seed}")
    if args.model not in PRESETS:
        raise UsageError(f"unknown --model {args.model!r}; choose one of: {', '.join(PRESETS)}")
    if args.overwrite and args.resume:
        raise UsageError("--overwrite 1 starts over and --resume 1 continues: pass one of them")
    if args.allow_config_change and not args.resume:
        raise UsageError("--allow_config_change 1 applies to --resume 1 only")
    if bool(args.task_eval) != bool(args.task_every):
        raise UsageError("--task_eval TASK:FILE and --task_every N go together")
    if args.task_eval:
        load_task_spec(args.task_eval, args.task_limit or None)  # a bad file stops here, before the run folder is touched


def check_seq_warmup(seq_len: int, start: int) -> None:
    """--seq_warmup_steps doubles the window from --seq_warmup_start to --seq_len: both must allow that."""
    if start < SEQ_WARMUP_MIN_START:
        raise UsageError(f"--seq_warmup_start must be at least {SEQ_WARMUP_MIN_START}, got {start}")
    if seq_len <= start:
        raise UsageError(f"--seq_warmup_steps grows the window from --seq_warmup_start {start} to --seq_len {seq_len}: "
                         f"there is nothing to grow; lower --seq_warmup_start or leave --seq_warmup_steps 0")
    ratio = seq_len // start
    if seq_len % start or ratio & (ratio - 1):
        shortest = seq_len  # the shortest start that doubles to seq_len
        while shortest % 2 == 0 and shortest // 2 >= SEQ_WARMUP_MIN_START:
            shortest //= 2
        raise UsageError(f"--seq_warmup_steps doubles the window from --seq_warmup_start to --seq_len, so --seq_len must "
                         f"be --seq_warmup_start times a power of two (got {seq_len} and {start}); "
                         + (f"e.g. --seq_warmup_start {shortest}" if shortest < seq_len else "pick another --seq_len")
                         + " or leave --seq_warmup_steps 0")


def check_switches(args, sw: Switches, device: torch.device, world: int) -> None:
    cuda = device.type == "cuda"
    if sw.autocast and not cuda:
        raise UsageError("--autocast 1 needs CUDA (bf16 autocast); on CPU training runs in float32")
    if sw.cuda_graph and not cuda:
        raise UsageError("--cuda_graph 1 needs CUDA; use --cuda_graph 0 on CPU")
    if sw.residual_dtype == "bf16" and not sw.autocast:
        raise UsageError("--residual_dtype bf16 keeps the residual stream in the autocast dtype: it needs --autocast 1 "
                         "(CUDA); without autocast the model runs in float32")
    if sw.cuda_graph and (world > 1 or args.fsdp):
        raise UsageError("--cuda_graph 1 is single-process only; use --cuda_graph 0 under torchrun")
    if sw.grad_reduce_bf16 and not (cuda and world > 1 and not args.fsdp):
        raise UsageError("--grad_reduce_dtype bf16 is a DDP option on CUDA (NCCL): launch with torchrun on GPUs, "
                         "or leave it at fp32")
    if args.fsdp and sw.optimizer == "muon":
        raise UsageError("--optimizer muon orthogonalises each whole matrix and --fsdp 1 gives every rank a shard of "
                         "it: train Muon under DDP (--fsdp 0), or FSDP2 with --optimizer adamw")
    if args.fsdp and world == 1:
        raise UsageError("--fsdp 1 shards over several processes; launch with torchrun --nproc_per_node=N (N >= 2)")
    if args.doc_mask and sw.model_impl == "hf":
        raise UsageError("--doc_mask 1 masks our attention; transformers' model (--model_impl hf) has no such path: "
                         "use --model_impl ours or --doc_mask 0")


def parse_and_check(argv=None):
    """Every flag checked here, worded as a flag: (args as typed, the process group, switches, model config)."""
    args = parse_args(argv)
    check_values(args)
    if args.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError as e:
            raise UsageError(f"--tensorboard 1 needs the tensorboard package ({e}); pip install tensorboard") from e
    try:
        env = parallel.setup(args.device)
    except UsageError as e:
        raise UsageError(f"--device {args.device}: {e}") from e
    switches = resolve_switches(args, env.device, env.world_size)
    check_switches(args, switches, env.device, env.world_size)
    config = get_config(args.model, attn_impl=switches.attn, tie_word_embeddings=switches.tie_word_embeddings,
                        residual_dtype=switches.residual_dtype)
    if args.seq_len > config.max_position_embeddings:
        raise UsageError(f"--seq_len {args.seq_len} exceeds max_position_embeddings "
                         f"({config.max_position_embeddings}) of --model {args.model}")
    if args.task_eval:  # every choice tokenized now: one the model cannot score stops here, not at the first score
        from smollm2.evaluation import check_task_fits
        check_task_fits(args.task_eval, args.task_limit or None, args.tokenizer_id, config.max_position_embeddings)
    return args, env, switches, config


def check_fits(tokenizer, config, args) -> None:
    """What would otherwise fail only at the first step or sample: the tokenizer's ids must index the
    embedding, and prompt + sample must fit the model's positions."""
    if tokenizer.vocab_size > config.vocab_size:
        raise UsageError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size:,} ids but --model {args.model} "
                         f"embeds {config.vocab_size:,}; use the SmolLM2 tokenizer")
    if args.sample_every:
        n = len(tokenizer.encode(args.sample_prompt) or [0]) + args.sample_tokens
        if n > config.max_position_embeddings:
            raise UsageError(f"--sample_prompt plus --sample_tokens is {n} tokens, more than the "
                             f"{config.max_position_embeddings} positions of --model {args.model}; lower --sample_tokens")


def is_out_of_memory(e: BaseException) -> bool:
    # CUDA raises torch.OutOfMemoryError; the CPU allocator a RuntimeError; NumPy a MemoryError.
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(e) \
        or "not enough memory" in str(e)


# ================================================================================================ build the run
@dataclass
class Run:
    """Everything the loop touches, built once by build_run."""
    args: argparse.Namespace
    switches: Switches
    env: parallel.DistEnv
    config: object
    start: Start
    log: Logger
    events: MetricsWriter
    tokenizer: object
    dataset: object
    data: TokenBatches
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step_fn: TrainStep
    start_step: int
    sample_every: int  # 0 under --model_impl hf: transformers' generate has another API; samples are ours only
    decoder: Optional[DecodeGraph] = None  # made by the first sample on CUDA (sample_text)
    task: Optional[tuple] = None  # (name, items) of --task_eval

    @property
    def tokens_per_step(self) -> int:  # once a batch warmup is over
        return self.args.batch_size * self.args.grad_accum * self.args.seq_len * self.env.world_size

    def tokens_through(self, step: int) -> int:
        """Tokens trained on in steps 1 .. step (all ranks)."""
        micro = micro_batches_before(step + 1, self.args.grad_accum, self.args.batch_warmup_steps)
        return micro * self.args.batch_size * self.args.seq_len * self.env.world_size


def build_run(args, env, switches: Switches, config, start: Start, log, events: MetricsWriter,
              mark=lambda part: None) -> Run:
    """Tokenizer, data, model (from the checkpoint on resume), optimizer and the training step. mark(part)
    books the start-up time since the previous mark (WallClock.setup_part)."""
    rank, device, ckpt = env.rank, env.device, start.ckpt
    tokenizer = load_tokenizer(args.tokenizer_id, log=log)
    check_fits(tokenizer, config, args)
    if rank != 0:
        parallel.barrier()  # rank 0 downloads the default corpus and tokenizes it once; the rest read its cache
    dataset = load_training_data(args.input_file, tokenizer, os.path.join(args.out_dir, CACHE_DIR),
                                 args.val_fraction, log=log, allow_download=rank == 0)
    if rank == 0:
        parallel.barrier()
    data = TokenBatches(dataset, args.seq_len, args.seed, args.sampler)
    mark("tokenizer_data")

    torch.manual_seed(args.seed)
    model = SmolLM2ForCausalLM(config, init=ckpt is None)  # a resume loads every weight
    if switches.model_impl == "hf":
        from smollm2.hf import to_hf_model
        model = TransformersAdapter(to_hf_model(model).train())
    if ckpt is not None:
        saved = {"data.fingerprint": (ckpt.get("data") or {}).get("fingerprint", data.fingerprint)}  # older: unrecorded
        start.notes += check_resume(saved, {"data.fingerprint": data.fingerprint}, bool(args.allow_config_change),
                                    start.ckpt_path)
        model.load_state_dict(ckpt["model"], strict=True)
    model.to(device)
    if args.fsdp:
        parallel.apply_fsdp(model)
    step_fn = build_train_step(model, switches, device, lr=args.max_lr, weight_decay=args.weight_decay,
                               adamw_lr=args.adamw_lr, norm_lr=args.norm_lr,
                               muon_variant=args.muon_variant, momentum_schedule=args.muon_momentum_warmup_steps > 0,
                               document_end=eos_id_of(tokenizer) if args.doc_mask else None,
                               static_shapes=args.seq_warmup_steps > 0,
                               grad_clip=args.grad_clip, optimizer_state=ckpt["optimizer"] if ckpt else None, log=log)
    if ckpt is not None:
        set_rng_state(ckpt["rng"])
    mark("model_optimizer")
    return Run(args=args, switches=switches, env=env, config=config, start=start, log=log, events=events,
               tokenizer=tokenizer, dataset=dataset, data=data, model=model, optimizer=step_fn.optimizer, step_fn=step_fn,
               start_step=int(ckpt["global_step"]) if ckpt is not None else 0,
               sample_every=0 if switches.model_impl == "hf" else args.sample_every,
               task=load_task_spec(args.task_eval, args.task_limit or None) if args.task_eval else None)


def log_header(run: Run) -> None:
    args, env, config, log, device = run.args, run.env, run.config, run.log, run.env.device
    n_params = sum(p.numel() for p in run.model.parameters())  # a tied matrix counts once
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    world = env.world_size
    data_parallel = (("gradients all-reduced in bf16 | " if run.switches.grad_reduce_bf16 else "")
                + ("FSDP2" if args.fsdp else "DDP" if world > 1 else "single process"))
    log("=" * 100)
    log(f"SmolLM2 from-scratch training | {datetime.datetime.now().isoformat(timespec='seconds')}")
    log(f"Device: {device} ({device_name(device)}) | CUDA available: {torch.cuda.is_available()} | "
        f"bf16 supported: {bf16} | torch {torch.__version__} | world size {world}")
    log("Args: " + json.dumps(vars(args), sort_keys=True))
    log(f"Tokenizer: {run.tokenizer.source} | data {run.dataset.description}")
    log(f"Data: train {len(run.data.train):,} tokens | val {len(run.data.val):,} | sampler {args.sampler} "
        f"({run.data.windows_per_epoch:,} windows per epoch) | fingerprint {run.dataset.fingerprint}")
    log(f"Model: {args.model} | layers {config.num_hidden_layers} | hidden {config.hidden_size} | heads "
        f"{config.num_attention_heads}/{config.num_key_value_heads} kv | attention {config.attn_impl} | "
        f"tied {config.tie_word_embeddings}")
    log(f"Model params: {n_params:,}")
    log(f"Global batch: {args.batch_size} x grad_accum {args.grad_accum} x world {world} x seq {args.seq_len} "
        f"= {run.tokens_per_step:,} tokens/step"
        + (f" (batch warmup: from 1 micro-batch at step 1 to {args.grad_accum} at step {args.batch_warmup_steps})"
           if args.batch_warmup_steps else "")
        + (f" (sequence warmup: windows of {args.seq_warmup_start} tokens at step 1, doubling to {args.seq_len} at "
           f"step {args.seq_warmup_steps + 1})" if args.seq_warmup_steps else ""))
    log(f"Speed path: {run.switches.describe()} | {data_parallel}")
    if run.start.ckpt is None:
        log("Starting from scratch (random init).")
        run.events("start", step=0)
    else:
        log(f"RESUME: starting from global_step={run.start_step} (loaded {os.path.basename(run.start.ckpt_path)})")
        run.events("resume", step=run.start_step, checkpoint=os.path.basename(run.start.ckpt_path))
    run.events("header", device=str(device), device_name=device_name(device), torch=torch.__version__,
               world_size=world, params=n_params, tokens_per_step=run.tokens_per_step, args=vars(args),
               switches=asdict(run.switches), run_id=run.start.run_id)
    log(f"Run id: {run.start.run_id} (in {RUN_FILE} and every checkpoint; a resume only falls back to its own files)")
    for note in run.start.notes:
        log(note)


# ================================================================================================ the loop
def log_interval(run: Run, step: int, lr: float, grad_norm: torch.Tensor, interval: Interval, flops_per_tok: float,
                 metrics: dict) -> None:
    mean_loss, steps, dt = interval.read()
    norm, peak, world = float(grad_norm), peak_flops(device_name(run.env.device)), run.env.world_size
    metrics.update(train_loss=mean_loss, train_loss_step=step)
    tok_s = (run.tokens_through(step) - run.tokens_through(step - steps)) / dt
    mfu = tok_s * flops_per_tok / (peak * world) if peak else None
    run.log(f"step {step:5d}/{run.args.max_steps} | lr {lr:.3e} | loss {mean_loss:.4f} | grad_norm {norm:.3f} | "
            f"ms/step {1000 * dt / steps:.2f} | tok/s {tok_s:.1f} | mfu " + (f"{100 * mfu:.2f}%" if mfu is not None else "n/a"))
    run.events("train", step=step, lr=lr, loss=finite_or_none(mean_loss), grad_norm=finite_or_none(norm),
               ms_per_step=1000 * dt / steps, tok_s=tok_s, mfu=mfu)


def log_validation(run: Run, step: int, metrics: dict, steps_s: Optional[float] = None) -> None:
    """The held-out loss; its metrics.jsonl event carries steps_s, the seconds this process has spent in
    training steps so far (after the first step's compile; no validation, sample or save): the clock a
    time-to-loss comparison reads (benchmarks/time_to_loss.py), and the tokens trained on through this step."""
    args = run.args
    rows = args.batch_size * args.grad_accum  # --val_batches counts batches of one optimizer step's rows
    windows = ByteCount(run.data.val_batches(args.val_batches * rows, max(rows, EVAL_TOKENS // args.seq_len)),
                        token_byte_lengths(run.tokenizer))  # bits per byte: the same loss over the text's bytes
    with torch.compiler.set_stance("force_eager"):  # layers compiled in place (blocks) would compile a no-grad graph
        val_loss = evaluate(run.model, windows, run.env.device, run.switches.amp_dtype)
    if val_loss is None:
        return
    bpb = windows.bpb(val_loss)
    metrics.update(val_loss=float(val_loss), val_loss_step=step, val_bpb=bpb)
    ppl = math.exp(min(val_loss, 50))
    run.log(f"step {step:5d}/{args.max_steps} | val loss {val_loss:.4f} | val ppl {ppl:.2f} | val bpb {bpb:.4f}")
    run.events("val", step=step, loss=finite_or_none(val_loss), ppl=finite_or_none(ppl), bpb=finite_or_none(bpb),
               steps_s=steps_s, tokens=run.tokens_through(step))


def log_task(run: Run, step: int, metrics: dict) -> None:
    """--task_eval: acc / acc_norm of the task's items, scored as evaluate.py (and lm-evaluation-harness) do.
    Every rank runs it (FSDP2 shards need all of them); rank 0 logs."""
    name, items = run.task
    with torch.compiler.set_stance("force_eager"):
        scores = score_items(run.model, run.tokenizer, items, run.args.batch_size * run.args.grad_accum,
                             run.env.device, run.switches.amp_dtype, metric_names=TASKS[name].metrics)
    run.model.train()
    m = scores.metrics
    metrics.update({f"{name}_{k}": m[k] for k in ("acc", "acc_norm") if k in m}, task_step=step)
    run.log(f"step {step:5d}/{run.args.max_steps} | task {name} | " +
            " | ".join(f"{k} {m[k]:.4f}" for k in ("acc", "acc_norm") if k in m) + f" | items {m['items']}")
    run.events("task", step=step, task=name, **{k: m[k] for k in ("acc", "acc_norm", "items") if k in m})


def sample_text(run: Run, step: int) -> str:
    """The text sample of `step`: the prompt and --sample_tokens sampled tokens (temperature 0.8, top-k 50).
    On one CUDA device each token is one replay of a captured decoding step (run.decoder, made at the first
    sample and kept: it reads the weights in place); elsewhere (CPU, FSDP2 shards) the model decodes eagerly."""
    model, tokenizer, args, device, amp_dtype = run.model, run.tokenizer, run.args, run.env.device, run.switches.amp_dtype
    ids = torch.tensor([tokenizer.encode(args.sample_prompt) or [model.config.bos_token_id]], device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed + step)  # own generator: training RNG untouched
    if run.decoder is None and device.type == "cuda" and not args.fsdp:
        run.decoder = DecodeGraph(model, 1, ids.shape[1] + args.sample_tokens, amp_dtype)
    was_training = model.training
    model.eval()
    # Eager even where layers were compiled in place (--compile_scope blocks): decoding one token at a time
    # against a growing cache would recompile per position.
    with amp_context(device, amp_dtype), torch.compiler.set_stance("force_eager"):
        out = generate(model, ids, args.sample_tokens, temperature=0.8, top_k=50, generator=gen, graph=run.decoder)
    model.train(was_training)
    return tokenizer.decode(out[0].tolist())


def train_loop(run: Run, saves: Checkpoints, clock: WallClock, metrics: dict) -> tuple[int, bool]:
    """Steps start_step+1 .. max_steps. Returns (the last step run, whether a signal stopped the run there
    after saving it)."""
    args, log, data, rank, world, device = run.args, run.log, run.data, run.env.rank, run.env.world_size, run.env.device
    decay_steps = args.lr_decay_steps or args.max_steps
    flops_per_tok = flops_per_token(sum(p.numel() for p in run.model.parameters()), run.config.num_hidden_layers,
                                    run.config.hidden_size, args.seq_len)
    artifacts = os.path.join(args.out_dir, CACHE_DIR, ARTIFACTS) if run.switches.compile and args.compile_cache else None
    if artifacts:
        load_artifacts(artifacts, log)
    stop, interval, step = StopFlag(), Interval(device), run.start_step
    run.model.train()
    for step in range(run.start_step + 1, args.max_steps + 1):
        lr = lr_at(step, args.warmup_steps, decay_steps, args.max_lr, args.min_lr, args.lr_schedule,
                   args.lr_decay_fraction)
        set_lr(run.optimizer, lr)
        if step <= args.muon_momentum_warmup_steps:  # from then on 0.95, as built and as saved at step N
            set_momentum(run.optimizer, momentum_at(step, args.muon_momentum_warmup_steps))
        accum = accum_at(step, args.grad_accum, args.batch_warmup_steps)
        before = micro_batches_before(step, args.grad_accum, args.batch_warmup_steps)
        xs, ys = data.step_batch(step, accum, args.batch_size, device, rank, world, before)
        length = seq_len_at(step, args.seq_len, args.seq_warmup_start, args.seq_warmup_steps)
        loss, grad_norm = run.step_fn(*split_windows(xs, ys, length))
        if args.batch_warmup_steps:  # the checkpoint's count for the model card: fewer than step x tokens per step
            metrics["tokens_seen"] = run.tokens_through(step)
        interval.add(loss)
        log.advance()
        # Compile, warm-up and CUDA-graph capture happen in the first call, and again at a warmup's next stage (a
        # new shape for TrainStep): booked to compile, not to the steps
        if step == run.start_step + 1 or (run.step_fn.fresh and (run.switches.compile or run.switches.cuda_graph)):
            clock.lap("compile")
            if artifacts and rank == 0:  # written again after a stage: it holds the new shape's code too
                os.makedirs(os.path.dirname(artifacts), exist_ok=True)
                save_artifacts(artifacts, log)
                clock.lap("compile")
        if step == run.start_step + 1:
            saves.reserve()

        if step % args.log_every == 0 or step == args.max_steps:
            clock.lap("steps")
            log_interval(run, step, lr, grad_norm, interval, flops_per_tok, metrics)
            saves.ensure_finite(step)
            saves.collect(saves.writer.poll())
            interval.restart()
            clock.lap("other")
        if run.sample_every and (step == 1 or step % run.sample_every == 0):
            clock.lap("steps")
            saves.ensure_finite(step)  # non-finite logits would make sampling fail
            # Under FSDP2 every rank must run the forward (each holds a shard); the others' text is discarded.
            if rank == 0 or args.fsdp:
                log(f"[sample @ step {step}] {sample_text(run, step)}")
            clock.lap("sample")
        if args.val_every and step % args.val_every == 0:
            clock.lap("steps")
            saves.ensure_finite(step)
            log_validation(run, step, metrics, clock.seconds.get("steps", 0.0))
            clock.lap("val")
        if run.task and step % args.task_every == 0:
            clock.lap("steps")
            saves.ensure_finite(step)
            log_task(run, step, metrics)
            clock.lap("val")
        failed = write_failure(run)
        stopping = parallel.any_rank(stop.requested is not None or failed is not None)
        if failed:
            saves.cause = f"{failed}; "
        if (args.save_every and (step % args.save_every == 0 or step == args.max_steps)) or stopping:
            clock.lap("steps")
            saves.save(step, f" (stopping on {stop.requested})" if stopping and stop.requested else "")
            clock.lap("save")
        if stopping:
            saves.collect(saves.writer.wait())  # exit 0 only once the file is on disk
            clock.lap("final_write")
            if failed:  # the save above landed; the log could not say so
                raise RunStopped(f"{failed}; saved step {step} ({LATEST}): "
                                 f"{write_failure_advice(run.log.failed or run.events.failed, args.out_dir)}, "
                                 f"then --resume 1", 1)
            log(f"STOP: {stop.requested or 'signal on another rank'} received; saved step {step}. "
                f"Continue with the same command and --resume 1.")
            run.events("stop", step=step, signal=stop.requested)
            return step, True
    return step, False


def write_failure(run: Run) -> Optional[str]:
    """Why train.log or metrics.jsonl could not be written (rank 0), or None: the loop stops at once."""
    err = run.log.failed or run.events.failed
    if err is None:
        return None
    return f"could not write {err.filename} ({err.strerror or err}); the run stopped at that step"


# ================================================================================================ main
def main(argv=None) -> int:
    # ---- parse and check: every flag, before anything is read or written
    args, env, switches, config = parse_and_check(argv)
    clock = WallClock(env.device)
    # ---- the folder, its lock and the resume point, before the log opens: a refusal leaves train.log untouched
    start = prepare_run(args, env.rank, env.world_size, config)
    switches = kept_compile_scope(args, switches, start.ckpt)
    clock.setup_part("checkpoint_read")
    start_step = int(start.ckpt["global_step"]) if start.ckpt is not None else 0
    log = Logger(start.folder.log_path, env.rank == 0, args.max_steps, start_step)
    events = MetricsWriter(os.path.join(args.out_dir, METRICS_FILE) if env.rank == 0 else None,
                           tensorboard_writer(args) if env.rank == 0 else None)
    if events.note:
        log(events.note)
    saves: Optional[Checkpoints] = None
    try:
        # ---- build the run (and resume: the model, optimizer and RNG come from the checkpoint)
        run = build_run(args, env, switches, config, start, log, events, clock.setup_part)
        log_header(run)
        if start_step >= args.max_steps:
            log(f"Nothing to do: checkpoint is at step {start_step} >= --max_steps {args.max_steps}.")
            return 0
        # ---- the loop
        # The latest logged numbers, saved in every checkpoint so a model card reads them instead of the log.
        # A resume carries the previous ones until this run logs its own.
        metrics = {**((start.ckpt or {}).get("metrics") or {}), "device": device_name(env.device),
                   "data": run.dataset.description, "tokens_per_step": run.tokens_per_step}
        saves = Checkpoints(run, clock, metrics)
        clock.start_loop()
        last, stopped = train_loop(run, saves, clock, metrics)
        # ---- finish: the last write lands, then the DONE and WALL lines
        clock.lap("steps")
        saves.collect(saves.writer.wait())
        clock.lap("final_write")
        if not stopped:
            finish(run, clock)
        if write_failure(run):
            raise RunStopped(f"{write_failure(run)}: the run finished, but its log lacks the end", 1)
        rounded = lambda v: round(v, 3) if isinstance(v, float) else v  # noqa: E731
        wall = {k: {p: rounded(x) for p, x in v.items()} if isinstance(v, dict) else rounded(v)
                for k, v in clock.summary(last - start_step, bool(args.async_save)).items()}
        log("WALL: " + json.dumps(wall))
        events("wall", step=last, **wall)
        return 0
    except Exception as e:
        if isinstance(e, RunStopped) or not is_out_of_memory(e):
            raise
        msg = (f"out of memory with --batch_size {args.batch_size} x --seq_len {args.seq_len} "
               f"({(str(e).strip().splitlines() or [type(e).__name__])[0][:160]}); lower --batch_size (raise "
               f"--grad_accum to keep the tokens per step) or --seq_len")
        log(f"ERROR: {msg}")
        raise RunStopped(msg, 2) from e
    finally:
        if saves is not None:
            saves.close()
        events.close()
        log.close()
        start.folder.close()
        parallel.teardown()


def finish(run: Run, clock: WallClock) -> None:
    args, device = run.args, run.env.device
    total = time.perf_counter() - clock.t0
    tokens = run.tokens_through(args.max_steps) - run.tokens_through(run.start_step)
    peak_mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    run.log(f"DONE: steps {run.start_step + 1}..{args.max_steps} in {total:.1f}s "
            f"({tokens / total:.1f} tok/s overall, compile/capture included)"
            + (f" | peak mem {peak_mem / 1e9:.2f} GB" if peak_mem is not None else ""))
    run.events("done", step=args.max_steps, first_step=run.start_step + 1, last_step=args.max_steps, seconds=total,
               tok_s=tokens / total, peak_mem_bytes=peak_mem)


def tensorboard_writer(args):
    if not args.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter  # parse_and_check made sure it imports
    return SummaryWriter(os.path.join(args.out_dir, "tensorboard"))


def aborted(argv=None) -> str:
    """The one line after an interrupt that did not wait for a save: before the loop (the corpus being
    prepared: its finished shards are kept) or a second Ctrl-C. Names the last complete checkpoint: the step
    file that checkpoint_latest.pt is a hard link of."""
    try:
        ckpt_dir = os.path.join(parse_args(argv).out_dir, CKPT_DIR)
        latest = os.stat(os.path.join(ckpt_dir, LATEST))
    except (OSError, SystemExit):
        return "aborted; no checkpoint saved in this folder yet: run the same command again"
    same = [n for n in sorted(os.listdir(ckpt_dir)) if n.startswith("checkpoint_step_")
            and os.stat(os.path.join(ckpt_dir, n)).st_ino == latest.st_ino]
    return (f"aborted; the last complete checkpoint is {os.path.join(ckpt_dir, same[0] if same else LATEST)}: "
            f"continue with the same command and --resume 1")


def interrupt_on(signum, frame):
    """SIGTERM and SIGHUP before the loop's own handlers (StopFlag) are set: stop like Ctrl-C, with one line."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def on_interrupt(e: KeyboardInterrupt) -> tuple[str, int]:
    name = str(e) if str(e) in ("SIGTERM", "SIGHUP") else "SIGINT"
    return f"{name} received: {aborted()}", 128 + signal.Signals[name].value


def cli(fast_exit: bool = False) -> None:
    """train.py's command line: main()'s status, or a one-line error with the error's status (2 for bad input, the
    stop's own) or 128 + the signal's number. As the script (fast_exit) it leaves through exit_without_teardown;
    called in a process that goes on (tests), it raises SystemExit."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt_on)
    run_cli(main, "train.py", on_interrupt=on_interrupt, leave=exit_without_teardown if fast_exit else sys.exit)


def exit_without_teardown(code: int) -> None:
    """Leave once main() has closed everything it opened (log, metrics, run folder lock, last checkpoint write,
    process group): the atexit handlers still run (inductor's compile workers, anything a library registered)
    and the standard streams are flushed, but the interpreter's teardown of torch's module graph and the CUDA
    context is skipped, ~1 s on this repo's CPU runs (0.05 s instead), which the operating system does at exit
    anyway. An exception other than the ones run_cli reports takes the normal way out, traceback and all."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    cli(fast_exit=True)
