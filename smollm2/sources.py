"""Documents from files on disk, streamed in pieces of bounded size.

Inputs are files, directories (searched recursively) or glob patterns, in sorted order:
  .txt / .md / .rst / any other file named directly: one document per file
  .jsonl / .jsonl.gz / .jsonl.zst: one JSON object per line, the document in `text_field`
  .parquet: one row per document, the document in column `text_field`
Every reader yields `Piece`s: a document's text, cut where needed so that no piece exceeds
`max_chars`. The cuts fall only where the SmolLM2 pre-tokenizer starts a new pre-token anyway (where
a run of spaces or newlines begins after a non-space), so tokenizing the pieces one by one gives exactly the
ids of tokenizing the whole document (tested on all of Tiny Shakespeare and realdocs). A document
with no such place within 8 x max_chars is cut at max_chars (said in the docs; never seen in text).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Iterator

from smollm2.shards import DataError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
MAX_PIECE_CHARS = 1 << 20
HF_PREFIX = "hf:"
# Where a run of spaces or newlines starts after a non-space: no pre-token of the byte-level regex spans
# that point (only its whitespace alternatives match whitespace, and they cannot start on a non-space),
# and what is matched from there on depends only on the text after it.
_SAFE_CUT = re.compile(r"(?<=\S)(?=[ \n])")
_READ_BYTES = 1 << 22


@dataclass(frozen=True)
class Piece:
    text: str
    last: bool  # the document ends with this piece


def _walk(top: str, exclude: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(files of a known kind, other files) under `top`, links followed, but never into a folder already
    walked (`ln -s . self` would otherwise be walked until the OS refuses, each file found again every time)
    nor into an excluded one (the training run's own folder)."""
    found, other, seen = [], [], set()
    for root, dirs, names in os.walk(top, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen or os.path.realpath(root) in exclude:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(names):
            (found if name.endswith(KNOWN_SUFFIXES) else other).append(os.path.join(root, name))
    return sorted(found), sorted(other)  # the order of the full paths, as before: the same job key


def expand_inputs(inputs: list[str], log=None, exclude: tuple[str, ...] = ()) -> list[str]:
    """Files named by paths, directories and globs; sorted, duplicates removed (by real path: a file
    reached through a link counts once). Refuses what is not a regular file (a FIFO or a device would hang
    or never end). In a directory only the known kinds are read; log(message) lists what else was skipped.
    Folders in `exclude` (a training run's own folder inside its input folder) are not walked.
    `hf:NAME[:SPLIT]` names a Hugging Face dataset (a `save_to_disk` folder, or a hub dataset already in
    the local cache or reachable)."""
    exclude = tuple(os.path.realpath(p) for p in exclude if p)
    found: list[str] = []
    hf = [spec for spec in inputs if spec.startswith(HF_PREFIX)]
    for spec in inputs:
        if spec.startswith(HF_PREFIX):
            continue
        if any(ch in spec for ch in "*?["):
            matches = sorted(glob.glob(spec, recursive=True))
            found += [m for m in matches if not os.path.isdir(m)]
            if not matches:
                raise DataError(f"no files match {spec}; check the pattern")
        elif os.path.isdir(spec):
            real = os.path.realpath(spec)
            if any(real == ex or real.startswith(ex + os.sep) for ex in exclude):
                raise DataError(f"input folder {spec} is inside the training run's own folder (--out_dir); put the "
                                f"corpus elsewhere or pick another --out_dir")
            in_dir, other = _walk(spec, exclude)
            if other and log is not None:
                shown = ", ".join(os.path.relpath(p, spec) for p in other[:5])
                log(f"skipped {len(other)} file(s) in {spec} that are not {'/'.join(KNOWN_SUFFIXES)}: {shown}"
                    + (f" and {len(other) - 5} more" if len(other) > 5 else ""))
            if not in_dir:
                raise DataError(f"directory {spec} holds no {'/'.join(KNOWN_SUFFIXES)} files")
            found += in_dir
        elif os.path.exists(spec):
            found.append(spec)
        else:
            raise DataError(f"input {spec} does not exist; pass files, directories or globs of "
                            f"{'/'.join(KNOWN_SUFFIXES)} files")
    by_real = {}
    for p in found:
        by_real.setdefault(os.path.realpath(p), os.path.abspath(p))
    unique = list(by_real.values())
    for path in unique:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise DataError(f"input {path} is not a regular file (a FIFO, socket or device); pass a file")
    if not unique and not hf:
        raise DataError(f"no input files found in {' '.join(inputs)}")
    return unique + hf


def split_text(text: str, max_chars: int = MAX_PIECE_CHARS) -> list[str]:
    """Cut text into pieces of at most max_chars at pre-token boundaries (see the module docstring)."""
    pieces, start = [], 0
    while len(text) - start > max_chars:
        cut = _find_cut(text, start, max_chars)
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _find_cut(text: str, start: int, max_chars: int, more_coming: bool = False):
    """The last safe cut in text[start + max_chars // 2 : start + max_chars], else the first one after (within
    8 x max_chars). None when there is none yet but `more_coming` text could still hold one: read on."""
    end, lo = start + max_chars, start + max_chars // 2
    while end > lo:  # scan back from the end: a few rfind calls, not a regex over the whole window
        i = max(text.rfind(" ", lo, end), text.rfind("\n", lo, end))
        if i < 0:
            break
        if i > 0 and not text[i - 1].isspace():
            return i
        end = i
    m = _SAFE_CUT.search(text, start + max_chars, start + 8 * max_chars)  # a longer piece rather than a wrong cut
    if m:
        return m.start()
    return None if more_coming and len(text) < start + 8 * max_chars + 1 else start + max_chars


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise DataError(f"{where} contains NUL bytes (binary data?); pass UTF-8 text")


def read_text_file(path: str, max_chars: int = MAX_PIECE_CHARS) -> Iterator[Piece]:
    """One document, read in blocks and decoded incrementally: a file larger than memory is fine."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    buf, offset, any_text = "", 0, False
    with open(path, "rb") as f:
        while True:
            block = f.read(_READ_BYTES)
            try:
                buf += decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not valid UTF-8 (byte {offset + e.start:,}); pass UTF-8 text") from e
            offset += len(block)
            _check_text(buf, path)
            any_text = any_text or not (buf.isspace() or buf == "")
            while len(buf) > 2 * max_chars or (not block and len(buf) > max_chars):
                cut = _find_cut(buf, 0, max_chars, more_coming=bool(block))
                if cut is None:  # a long stretch without a safe cut: read on (up to 8 x max_chars) before cutting
                    break
                yield Piece(buf[:cut], False)
                buf = buf[cut:]
            if not block:
                break
    if not any_text:
        raise DataError(f"input file {path} is empty; pass a text corpus")
    yield Piece(buf, True)


def _open_lines(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError as e:
            raise DataError(f"reading {path} needs `pip install zstandard`") from e
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def read_jsonl(path: str, text_field: str, max_chars: int = MAX_PIECE_CHARS) -> Iterator[Piece]:
    n_docs, lineno = 0, 0
    try:
        with _open_lines(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise DataError(f"{path} line {lineno} is not JSON ({str(e)[:80]}); fix or remove that line") from e
                if not isinstance(obj, dict) or text_field not in obj:
                    raise DataError(f"{path} line {lineno} has no field {text_field!r}; pass --text_field NAME")
                text = obj[text_field]
                if not isinstance(text, str):
                    raise DataError(f"{path} line {lineno}: field {text_field!r} is {type(text).__name__}, not text")
                if text:
                    _check_text(text, f"{path} line {lineno}")
                    n_docs += 1
                    yield from _pieces(text, max_chars)
    except (OSError, EOFError) as e:  # gzip/zstd: not compressed, or cut short
        raise DataError(f"{path} cannot be read after line {lineno} ({str(e)[:100]}); check the file") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path} line {lineno + 1} is not valid UTF-8; pass UTF-8 text") from e
    if n_docs == 0:
        raise DataError(f"{path} holds no documents (no non-empty {text_field!r} values)")


def read_parquet(path: str, text_field: str, max_chars: int = MAX_PIECE_CHARS) -> Iterator[Piece]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"reading {path} needs `pip install pyarrow`") from e
    n_docs = 0
    try:
        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise DataError(f"{path} has no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                            f"pass --text_field NAME")
        for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
            for text in batch.column(0).to_pylist():
                if text is None or text == "":
                    continue
                if not isinstance(text, str):
                    raise DataError(f"{path}: column {text_field!r} holds {type(text).__name__}, not text")
                _check_text(text, path)
                n_docs += 1
                yield from _pieces(text, max_chars)
    except DataError:
        raise
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError on a truncated or foreign file
        raise DataError(f"{path} is not a readable parquet file ({str(e).splitlines()[0][:100]})") from e
    if n_docs == 0:
        raise DataError(f"{path} holds no documents (no non-empty {text_field!r} values)")


def _pieces(text: str, max_chars: int) -> Iterator[Piece]:
    parts = split_text(text, max_chars)
    for i, part in enumerate(parts):
        yield Piece(part, i == len(parts) - 1)


def load_hf_dataset(spec: str):
    """`hf:NAME[:SPLIT]` -> a datasets.Dataset: a folder written by save_to_disk, or load_dataset(NAME)
    (its local cache first; the hub only where it is reachable)."""
    name, _, split = spec[len(HF_PREFIX):].partition(":")
    if not os.path.isdir(name):
        from smollm2.released import hub_reachable
        if not hub_reachable():  # the local cache only: no retries against a network that is not there
            os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"{spec} needs `pip install datasets`") from e
    try:
        if os.path.isdir(name):
            ds = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(name, split=split or "train")
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split or "train"]
    except Exception as e:  # offline and not cached, unknown name or split
        raise DataError(f"cannot load {spec} ({str(e).splitlines()[0][:120]}); pass local files, or a dataset "
                        f"that is cached or reachable") from e
    return ds


def read_hf(spec: str, text_field: str, max_chars: int = MAX_PIECE_CHARS) -> Iterator[Piece]:
    ds = load_hf_dataset(spec)
    if text_field not in ds.column_names:
        raise DataError(f"{spec} has no column {text_field!r} (columns: {', '.join(ds.column_names)}); "
                        f"pass --text_field NAME")
    for batch in ds.select_columns([text_field]).iter(batch_size=1024):
        for text in batch[text_field]:
            if text:
                _check_text(text, spec)
                yield from _pieces(text, max_chars)


def read_pieces(path: str, text_field: str = "text", max_chars: int = MAX_PIECE_CHARS) -> Iterator[Piece]:
    """Every document of one file (or `hf:` dataset), as pieces."""
    if path.startswith(HF_PREFIX):
        return read_hf(path, text_field, max_chars)
    if path.endswith(JSONL_SUFFIXES):
        return read_jsonl(path, text_field, max_chars)
    if path.endswith(PARQUET_SUFFIXES):
        return read_parquet(path, text_field, max_chars)
    return read_text_file(path, max_chars)
