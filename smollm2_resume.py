"""What a resumed run may change, in one table (RULES), and the one comparison that applies it.

A resume continues the saved run exactly only while the data order, the model and the meaning of a step
stay as they were. Every train.py setting is classified (tests/test_reliability.py checks that none is
missing):
  fixed    the checkpoint cannot even be loaded otherwise (architecture, implementation): always refused
  refused  changes the data order, the model's training or what a step does: refused (exit 2) unless
           --allow_config_change 1, and then logged as a WARNING
  allowed  the schedule's horizon, cadences, speed switches, paths: allowed and logged
  ignored  how this command was invoked, not a property of the run
The data's identity (the dataset's fingerprint: a hash of the inputs' content, the tokenizer and the
split settings) and the model's architecture take part as `data.*` and `model.*` entries.
"""

from __future__ import annotations

from smollm2_training import UsageError

FIXED, REFUSED, ALLOWED, IGNORED = "fixed", "refused", "allowed", "ignored"
MICRO_BATCHES = "grad_accum x world_size"  # micro-batches per step: N processes x accum A resumes on M x A*N/M

RULES: dict[str, str] = {
    # the data order: which windows each step sees
    "seed": REFUSED, "seq_len": REFUSED, "batch_size": REFUSED, MICRO_BATCHES: REFUSED, "val_fraction": REFUSED,
    "sampler": REFUSED, "data.": REFUSED,
    # what a step does
    "max_lr": REFUSED, "min_lr": REFUSED, "warmup_steps": REFUSED, "weight_decay": REFUSED, "grad_clip": REFUSED,
    # the model: its weights would not load
    "model.": FIXED, "model_impl": FIXED,
    # the horizon and the cadences
    "max_steps": ALLOWED, "lr_decay_steps": ALLOWED, "log_every": ALLOWED, "save_every": ALLOWED,
    "keep_checkpoints": ALLOWED, "sample_every": ALLOWED, "sample_prompt": ALLOWED, "sample_tokens": ALLOWED,
    "val_every": ALLOWED, "val_batches": ALLOWED, "async_save": ALLOWED, "tensorboard": ALLOWED,
    # where things are, and how fast the same step runs
    "input_file": ALLOWED, "tokenizer_id": ALLOWED, "device": ALLOWED, "attn": ALLOWED, "fast": ALLOWED,
    "autocast": ALLOWED, "compile": ALLOWED, "compile_scope": ALLOWED, "compile_cache": ALLOWED, "cuda_graph": ALLOWED,
    "fused_loss": ALLOWED, "fsdp": ALLOWED, "grad_reduce_dtype": ALLOWED, "stack_micro": ALLOWED,
    "residual_dtype": ALLOWED,
    # this invocation; grad_accum is compared as MICRO_BATCHES, the preset and the tie as model.*
    "grad_accum": IGNORED, "model": IGNORED, "tie_word_embeddings": IGNORED, "out_dir": IGNORED,
    "resume": IGNORED, "overwrite": IGNORED, "allow_config_change": IGNORED,
}


def rule(name: str) -> str:
    if name in RULES:
        return RULES[name]
    prefix = name.split(".", 1)[0] + "."
    return RULES.get(prefix, REFUSED)  # an unclassified setting is not assumed harmless


def settings(args: dict, world_size: int, architecture: dict) -> dict:
    """The comparable settings of a run: its args, the micro-batches per step, its architecture."""
    out = {k: v for k, v in args.items() if rule(k) != IGNORED}
    if "grad_accum" in args:
        out[MICRO_BATCHES] = args["grad_accum"] * world_size
    out.update({f"model.{k}": v for k, v in architecture.items()})
    return out


def check_resume(saved: dict, given: dict, allow_change: bool, source: str) -> list[str]:
    """Compare what the checkpoint's run used with what this command gives. Raises UsageError listing
    each refused difference as `name: saved -> given`; returns the log lines for the accepted ones.
    A setting the checkpoint does not record (written before it existed) is not compared."""
    changed = [(k, saved[k], given[k]) for k in given if k in saved and saved[k] != given[k]]
    lines = {kind: [f"{k}: {a!r} -> {b!r}" for k, a, b in changed if rule(k) == kind] for kind in (FIXED, REFUSED, ALLOWED)}
    if lines[FIXED]:
        raise UsageError(f"{source} holds a different model than this command builds (saved -> given):\n  "
                         + "\n  ".join(lines[FIXED] + lines[REFUSED])
                         + "\npass the matching --model, --tie_word_embeddings and --model_impl, or another --out_dir")
    if lines[REFUSED] and not allow_change:
        raise UsageError(f"cannot resume from {source}: these settings differ from the run's and would break "
                         f"its exact continuation (saved -> given):\n  " + "\n  ".join(lines[REFUSED])
                         + "\nkeep the saved values, pick another --out_dir, or pass --allow_config_change 1 "
                           "to change them on purpose")
    return ([f"WARNING: --allow_config_change 1: {line} (this run no longer continues the saved one exactly)"
             for line in lines[REFUSED]]
            + [f"CHANGED on resume: {line}" for line in lines[ALLOWED]])
