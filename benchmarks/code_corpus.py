"""A second kind of corpus for the quality benchmarks: Python source code, one document per .py file.

    python benchmarks/code_corpus.py --out data/pystdlib.jsonl          # this Python's standard library
    python prepare_data.py data/pystdlib.jsonl --out_dir data/pystdlib

Every .py file under --root (default: the running interpreter's standard library, tests included, without
site-packages), in sorted path order, each file once by content (a copied file is one document), files over
--max_file_bytes left out (generated tables, not code people write). The same Python version gives the same
corpus on every machine; the file list's hash is printed so two corpora can be compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from smollm2.common import OneLineParser, UsageError, run_cli  # noqa: E402


def python_files(root: str, max_file_bytes: int) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "dist-packages", "__pycache__"))
        found += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".py")]
    return [p for p in found if os.path.getsize(p) <= max_file_bytes]


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the .jsonl to write (one {\"text\", \"path\"} object per file)")
    p.add_argument("--root", default=sysconfig.get_paths()["stdlib"], help="folder searched for .py files")
    p.add_argument("--max_file_bytes", type=int, default=1 << 20, help="larger files are left out")
    args = p.parse_args(argv)
    if not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root} is not a folder")
    seen, docs, chars = set(), 0, 0
    listing = hashlib.sha256()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w", encoding="utf-8") as f:
        for path in python_files(args.root, args.max_file_bytes):
            try:
                with open(path, encoding="utf-8") as src:
                    text = src.read()
            except (UnicodeDecodeError, OSError):
                continue  # a file in another encoding (a test of the decoder, say)
            digest = hashlib.sha256(text.encode()).digest()
            if not text.strip() or "\x00" in text or digest in seen:
                continue
            seen.add(digest)
            rel = os.path.relpath(path, args.root)
            listing.update(rel.encode() + b"\0" + digest)
            f.write(json.dumps({"text": text, "path": rel}, ensure_ascii=False) + "\n")
            docs, chars = docs + 1, chars + len(text)
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {docs:,} files ({chars / 1e6:.1f}M characters) from {args.root} -> {args.out} "
          f"(listing sha256 {listing.hexdigest()[:16]})")
    return 0


if __name__ == "__main__":
    run_cli(main, "code_corpus.py")
