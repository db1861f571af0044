"""Tokenize a corpus of any size into token shards that train.py reads.

    python prepare_data.py ../shared/data/realdocs --out_dir data/realdocs
    python prepare_data.py 'dumps/*.jsonl.gz' more.parquet notes/ --out_dir data/mix --text_field text
    python train.py --input_file data/realdocs --seq_len 2048 --batch_size 16 --grad_accum 1 ...

Inputs: files, directories and globs of .txt (one document per file), .jsonl / .jsonl.gz / .jsonl.zst
and .parquet (the text in --text_field). Every document ends with the tokenizer's <|endoftext|> id.
Memory stays bounded however large the corpus; Ctrl-C or a crash may be followed by the same command,
which continues from the finished shards; rerunning on unchanged inputs does nothing. The format and
the guarantees are described in smollm2/shards.py and smollm2/prepare.py.
"""

from __future__ import annotations

import argparse
import signal
import sys

from smollm2.common import OneLineParser, SmolError, run_cli
from smollm2.io import write_failure_advice
from smollm2.prepare import ENCODERS, PrepareSettings, prepare
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID, load_tokenizer

DEFAULTS = PrepareSettings()


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(description="Tokenize documents into token shards for train.py.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="PATH", help="files, directories or globs (quote globs)")
    p.add_argument("--out_dir", required=True, help="dataset folder: shards and manifest.json")
    p.add_argument("--text_field", default=DEFAULTS.text_field, help="the document's field in .jsonl / column in .parquet")
    p.add_argument("--tokenizer_id", default=DEFAULT_TOKENIZER_ID, help="as train.py: hub id, directory, tokenizer.json or .gguf")
    p.add_argument("--val_fraction", type=float, default=DEFAULTS.val_fraction,
                   help="chance that a document is held out for validation (whole documents)")
    p.add_argument("--val_tokens", type=int, default=DEFAULTS.val_tokens, help="at most this many ids held out")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="picks the held-out documents")
    p.add_argument("--shard_tokens", type=int, default=DEFAULTS.shard_tokens, help="ids per shard (about)")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores; 0: in this process)")
    p.add_argument("--encoder", default="auto", choices=ENCODERS,
                   help="auto: tiktoken running the tokenizer's BPE when it is installed and proven to give the same "
                        "ids (about 4x faster), else tokenizers")
    p.add_argument("--overwrite", type=int, default=0, choices=[0, 1],
                   help="1: rebuild an --out_dir that holds a dataset of other inputs or settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = PrepareSettings(text_field=args.text_field, val_fraction=args.val_fraction, val_tokens=args.val_tokens,
                               seed=args.seed, shard_tokens=args.shard_tokens)
    tokenizer = load_tokenizer(args.tokenizer_id)
    try:
        prepare(args.inputs, args.out_dir, tokenizer, settings, workers=args.workers, overwrite=bool(args.overwrite),
                progress_bar=not args.quiet and sys.stderr.isatty(), encoder=args.encoder)
    except OSError as e:  # a full disk, a file-size limit, a folder made read-only: the unfinished shard is gone
        raise SmolError(f"could not prepare into {args.out_dir} ({e.strerror or e}): "
                        f"{write_failure_advice(e, args.out_dir)}; the finished shards are kept: run the same "
                        f"command again") from e
    return 0


def on_interrupt(e: KeyboardInterrupt) -> tuple[str, int]:
    return "interrupted; the finished shards are kept: run the same command again to continue", 130


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops like Ctrl-C: finished shards kept
    run_cli(main, "prepare_data.py", on_interrupt=on_interrupt)
