"""Token shards -> training and validation batches.

`--input_file` is either a folder prepared by prepare_data.py (or its manifest.json), or raw text:
a file, a directory or a glob of .txt / .jsonl(.gz/.zst) / .parquet files. Raw input is prepared into
the run's own cache (`<out_dir>/cache/data-<key>/`, the key a hash of the inputs' content, the
tokenizer and the split settings) by the same streaming code, never beside the corpus.

Batches are a pure function of (seed, step, micro-batch index, rank): a resumed run sees the batches
the uninterrupted run would have seen with no loader position to save, and data-parallel ranks take
disjoint micro-batch indices of the same step (rank r, micro-step m -> index r * grad_accum + m).
Two samplers:
  epoch  (default) every window of seq_len + 1 ids at offsets s, s + T, s + 2T, ... is visited once per
         epoch, in an order that is a keyed permutation of (seed, epoch), computed per index: no memory per
         window; the grid's start s in [0, T) is drawn per epoch too, so epochs cut the text differently.
  random windows at uniformly random offsets, drawn from a generator seeded with (seed, step, micro):
         windows overlap and repeat (nanoGPT's sampler; the sampler of the runs committed before the epoch mode).
Windows are read with pread from the shards (nothing stays mapped), so memory stays flat however long
the run and however large the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import numpy as np
import torch

from smollm2.io import atomic_open, atomic_write_text, file_sha256, remove_folder
from smollm2.shards import MANIFEST, DataError, FolderLock, ShardInfo, is_prepared, load_manifest, read_header, read_ids

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DEFAULT_INPUT = "input.txt"
SAMPLERS = ("epoch", "random")
DEFAULT_VAL_FRACTION = 0.1  # raw input: held out for validation

__all__ = ["DataError", "TokenDataset", "TokenBatches", "load_training_data", "read_corpus", "SAMPLERS"]


def download_tiny_shakespeare(path: str) -> None:
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(TINY_SHAKESPEARE_URL, timeout=15) as r:
            total = int(r.headers.get("Content-Length", 0)) or None
            with atomic_open(path) as f, tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {path}") as bar:
                while chunk := r.read(1 << 16):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        raise DataError(f"{path} is missing and Tiny Shakespeare could not be downloaded ({e.__class__.__name__}); "
                        f"pass --input_file PATH/TO/corpus.txt") from e


def read_corpus(path: str, allow_download: bool = True) -> str:
    """A small text file whole (sanity checks), with the checks every reader makes; training streams instead
    (load_training_data)."""
    from smollm2.sources import expand_inputs, read_text_file

    if not os.path.exists(path):
        if not (allow_download and os.path.basename(path) == DEFAULT_INPUT):
            raise DataError(f"input file {path} does not exist; pass --input_file PATH/TO/corpus.txt")
        download_tiny_shakespeare(path)
    if os.path.isdir(path):
        raise DataError(f"input file {path} is a directory; pass a text file with --input_file")
    return "".join(piece.text for piece in read_text_file(expand_inputs([path])[0]))


# ----------------------------------------------------------------------------- token streams
class Segment(Protocol):
    n_tokens: int

    def read(self, start: int, count: int) -> np.ndarray: ...


@dataclass(frozen=True)
class ShardSegment:
    info: ShardInfo

    @property
    def n_tokens(self) -> int:
        return self.info.n_tokens

    def read(self, start: int, count: int) -> np.ndarray:
        return read_ids(self.info, start, count)


@dataclass(frozen=True)
class ArraySegment:
    ids: np.ndarray

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    def read(self, start: int, count: int) -> np.ndarray:
        return self.ids[start:start + count]


class TokenStream:
    """Ids [lo, hi) of the concatenation of segments (shards), read on demand."""

    def __init__(self, segments: list, lo: int = 0, hi: Optional[int] = None):
        self.segments = segments
        self.starts = np.cumsum([0] + [s.n_tokens for s in segments])  # (S+1,) global offset of each segment
        self.lo, self.hi = lo, int(self.starts[-1]) if hi is None else hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def read(self, start: int, count: int) -> np.ndarray:
        """(count,) int64: ids [start, start + count) of this stream."""
        pos, end = self.lo + start, self.lo + start + count
        if start < 0 or end > self.hi:
            raise IndexError(f"window [{start}, {start + count}) outside a stream of {len(self)} ids")
        parts = []
        k = int(np.searchsorted(self.starts, pos, side="right")) - 1
        while pos < end:
            seg_lo = int(self.starts[k])
            n = min(end, int(self.starts[k + 1])) - pos
            parts.append(self.segments[k].read(pos - seg_lo, n))
            pos += n
            k += 1
        return np.concatenate(parts).astype(np.int64) if len(parts) > 1 else parts[0].astype(np.int64)


@dataclass
class TokenDataset:
    train: TokenStream
    val: TokenStream
    fingerprint: str  # what a checkpoint records: the same fingerprint means the same ids
    description: str  # one line for the log
    lock: Optional[FolderLock] = None  # a prepared folder's reader lock, held as long as the dataset is read

    @classmethod
    def from_array(cls, ids: np.ndarray, val_fraction: float = 0.0) -> "TokenDataset":
        """An in-memory dataset (tests, benchmarks): the tail val_fraction of `ids` held out."""
        ids = np.asarray(ids)
        n_val = int(len(ids) * val_fraction)
        seg = [ArraySegment(ids)]
        fp = hashlib.sha256(np.ascontiguousarray(ids).tobytes()).hexdigest()[:16]
        return cls(TokenStream(seg, 0, len(ids) - n_val), TokenStream(seg, len(ids) - n_val, len(ids)), fp,
                   f"{len(ids):,} ids in memory")


def open_prepared(path: str, tokenizer=None, verified_file: Optional[str] = None) -> TokenDataset:
    """A folder written by prepare_data.py, checked: manifest checksum, tokenizer, every shard's header
    and size, and each shard's sha256 (skipped for shards recorded in `verified_file` with the same
    sha256 in the manifest, size, inode and ctime, so a restart does not rehash a large corpus; any write
    to a shard, an mtime set back included, changes its ctime and brings the rehash back). The folder's
    reader lock is held as long as the dataset lives."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    lock = FolderLock(folder, exclusive=False)  # held while the process lives: no preparation rewrites it
    try:
        dataset = _open_checked(folder, load_manifest(path), tokenizer, verified_file)
    except BaseException:
        lock.close()
        raise
    dataset.lock = lock
    return dataset


def _open_checked(folder: str, manifest: dict, tokenizer, verified_file: Optional[str]) -> TokenDataset:
    if tokenizer is not None and tokenizer.fingerprint() != manifest["tokenizer"]["fingerprint"]:
        raise DataError(f"{folder} was prepared with tokenizer {manifest['tokenizer']['source']} "
                        f"(fingerprint {manifest['tokenizer']['fingerprint']}), but --tokenizer_id gives "
                        f"{tokenizer.source} ({tokenizer.fingerprint()}); pass the same tokenizer or prepare again")
    verified = _read_json(verified_file) if verified_file else {}
    streams = {}
    for split in ("train", "val"):
        segments = []
        for entry in manifest["shards"][split]:
            shard = os.path.join(folder, entry["file"])
            info = read_header(shard)
            if info.n_tokens != entry["tokens"] or info.n_docs != entry["documents"]:
                raise DataError(f"shard {shard} does not match the manifest; prepare the dataset again")
            st = os.stat(shard)
            # ctime, not mtime: a write changes it and no call sets it back (os.utime restores an mtime);
            # a copied or replaced file has another inode.
            stamp = [entry["sha256"], st.st_size, st.st_ino, st.st_ctime_ns]
            if verified.get(shard) != stamp:
                if file_sha256(shard) != entry["sha256"]:
                    raise DataError(f"shard {shard} does not match its sha256 in the manifest (changed or damaged); "
                                    f"prepare the dataset again")
                verified[shard] = stamp
            segments.append(ShardSegment(info))
        streams[split] = TokenStream(segments)
    if verified_file:
        _write_json(verified_file, verified)
    train, val = streams["train"], streams["val"]
    if manifest["val"]["mode"] == "tail":  # held out from the end of the train stream
        n = manifest["val"]["tokens"]
        train, val = TokenStream(train.segments, 0, len(train) - n), TokenStream(train.segments, len(train) - n)
    t = manifest["totals"]
    desc = (f"{folder}: {t['tokens']:,} tokens, {t['documents']:,} documents, {len(manifest['shards']['train'])} "
            f"train shards ({manifest['dtype']}) | val: {manifest['val']['mode']} ({len(val):,} tokens)")
    return TokenDataset(train, val, manifest["job_key"], desc)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_json(path: str, obj: dict) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, json.dumps(obj))
    except OSError:
        pass  # only costs a rehash next time


def _raw_sources_and_key(input_file: str, tokenizer, cache_dir: str, val_fraction: float, log) -> tuple[list, str, object]:
    """Raw input: (its sources, the cache key that is also the dataset's fingerprint, the settings)."""
    from smollm2.prepare import PrepareSettings, describe_sources, job_key
    from smollm2.sources import expand_inputs

    # The run's own folder (its metrics.jsonl, its cache) is never read as input, even inside the input folder.
    sources = describe_sources(expand_inputs([input_file], log, exclude=(os.path.dirname(cache_dir),)), log)
    # Raw input keeps train.py's meaning of --val_fraction: that fraction of the tokens, no cap.
    settings = PrepareSettings(val_fraction=val_fraction, val_tokens=1 << 62)
    return sources, job_key(sources, tokenizer.fingerprint(), settings), settings


def expected_fingerprint(input_file: str, tokenizer, cache_dir: str,
                         val_fraction: float = DEFAULT_VAL_FRACTION) -> Optional[str]:
    """The fingerprint load_training_data would give, found without preparing or writing anything (a resume
    that will be refused must not tokenize first); None when it cannot be known yet (input.txt to download)."""
    if is_prepared(input_file):
        return load_manifest(input_file)["job_key"]
    if input_file.startswith("hf:") or (not os.path.exists(input_file) and os.path.basename(input_file) == DEFAULT_INPUT):
        return None  # known only once loaded (a Hub dataset) or downloaded (Tiny Shakespeare)
    return _raw_sources_and_key(input_file, tokenizer, cache_dir, val_fraction, lambda m: None)[1]


def load_training_data(input_file: str, tokenizer, cache_dir: str, val_fraction: float = DEFAULT_VAL_FRACTION,
                       log: Callable[[str], None] = print, allow_download: bool = True,
                       workers: Optional[int] = None) -> TokenDataset:
    """The dataset behind --input_file: a prepared folder as it is, raw files prepared into cache_dir."""
    from smollm2.prepare import prepare

    verified = os.path.join(cache_dir, "verified_shards.json")
    if is_prepared(input_file):
        if val_fraction != DEFAULT_VAL_FRACTION:
            log(f"NOTE: --val_fraction {val_fraction} is not used: {input_file} keeps the split prepare_data.py made")
        return open_prepared(input_file, tokenizer, verified)
    if not os.path.exists(input_file) and allow_download and os.path.basename(input_file) == DEFAULT_INPUT:
        download_tiny_shakespeare(input_file)
    sources, key, settings = _raw_sources_and_key(input_file, tokenizer, cache_dir, val_fraction, log)
    folder = os.path.join(cache_dir, f"data-{key}")
    small = sum(s["bytes"] for s in sources) < 8 << 20  # a pool costs more than it saves on a small corpus
    if is_prepared(folder):
        try:
            return open_prepared(folder, tokenizer, verified)
        except DataError as e:
            # The run's own cache, keyed on content: rebuilt from the corpus, never a refusal on every run.
            log(f"the token cache {folder} is damaged ({e}); rebuilding it from {input_file}")
            try:
                remove_folder(folder, "the token cache", lambda f: os.path.isfile(os.path.join(f, MANIFEST)))
            except ValueError as refused:
                raise DataError(str(refused)) from None
    prepare([input_file], folder, tokenizer, settings, workers=0 if small else workers, log=log,
            progress_bar=not small, sources=sources)
    return open_prepared(folder, tokenizer, verified)


# ----------------------------------------------------------------------------- samplers
def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def permute(positions: np.ndarray, n: int, key: int, rounds: int = 6) -> np.ndarray:
    """A bijection of [0, n) keyed by `key`, applied elementwise: a balanced Feistel network over the
    smallest even number of bits covering n, cycle-walked back into range (Black & Rogaway 2002).
    O(1) memory however large n is; each epoch's order is a pure function of (key, position)."""
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = _splitmix64(np.arange(rounds, dtype=np.uint64) + np.uint64(key & 0xFFFFFFFFFFFFFFFF))
    x = np.asarray(positions, dtype=np.uint64)
    with np.errstate(over="ignore"):
        todo = np.ones(len(x), dtype=bool)
        while todo.any():
            left, right = x[todo] >> np.uint64(half), x[todo] & mask
            for k in keys:
                left, right = right, left ^ (_splitmix64(right ^ k) & mask)
            x[todo] = (left << np.uint64(half)) | right
            todo = x >= np.uint64(n)
    return x.astype(np.int64)


def _key(*parts: int) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


class TokenBatches:
    """Windows of seq_len + 1 ids from a TokenDataset's train and val streams."""

    def __init__(self, data: TokenDataset, seq_len: int, seed: int, sampler: str = "epoch"):
        if sampler not in SAMPLERS:
            raise DataError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        self.seq_len, self.seed, self.sampler = seq_len, seed, sampler
        self.train, self.val, self.fingerprint = data.train, data.val, data.fingerprint
        if len(self.train) < seq_len + 1:
            raise DataError(f"the corpus' train split has {len(self.train):,} tokens, fewer than one window of "
                            f"seq_len + 1 = {seq_len + 1}; use a longer corpus or a smaller --seq_len")
        if 0 < len(self.val) < seq_len + 1:
            self.val = TokenStream([], 0, 0)  # too short to evaluate on: report no val loss rather than a wrong one
        # Each epoch's grid of windows starts at its own shift in [0, T): every epoch still reads each id once,
        # but not cut at the same places (a fixed grid let the model learn the windows themselves: on Tiny
        # Shakespeare, 17 epochs of the README's 5,000-step run at seq 256: val loss 6.36 against 5.66 with random offsets).
        self.shiftable = len(self.train) >= 2 * seq_len + 1
        self.windows_per_epoch = ((len(self.train) - seq_len) if self.shiftable else (len(self.train) - 1)) // seq_len

    def _windows(self, stream: TokenStream, offsets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.seq_len
        rows = np.stack([stream.read(int(o), T + 1) for o in offsets])  # (B, T+1)
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    def train_offsets(self, step: int, micro_index: int, batch_size: int, micro_per_step: int,
                      start: Optional[int] = None) -> np.ndarray:
        """(B,) start offsets of micro-batch `micro_index` (of micro_per_step) of optimizer step `step` (1-based).
        start: the index, over all ranks, of this step's first micro-batch (default (step - 1) * micro_per_step;
        a batch warmup's earlier steps held fewer)."""
        if self.sampler == "random":
            rng = np.random.default_rng([self.seed, step, micro_index])
            return rng.integers(0, len(self.train) - self.seq_len, size=batch_size)
        start = (step - 1) * micro_per_step if start is None else start
        k = (start + micro_index) * batch_size + np.arange(batch_size)  # global window count
        epochs, positions = k // self.windows_per_epoch, k % self.windows_per_epoch
        out = np.empty(batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            windows = permute(positions[sel], self.windows_per_epoch, _key(self.seed, int(e)))
            out[sel] = self.epoch_shift(int(e)) + windows * self.seq_len
        return out

    def epoch_shift(self, epoch: int) -> int:
        """Where epoch `epoch`'s grid of windows starts: a pure function of (seed, epoch)."""
        return _key(self.seed, epoch, "shift") % self.seq_len if self.shiftable else 0

    def train_batch(self, step: int, micro_index: int, batch_size: int, micro_per_step: int = 1,
                    start: Optional[int] = None):
        # (B, T) inputs and (B, T) next-token targets.
        return self._windows(self.train, self.train_offsets(step, micro_index, batch_size, micro_per_step, start))

    def step_batch(self, step: int, grad_accum: int, batch_size: int, device, rank: int = 0, world: int = 1,
                   before: Optional[int] = None):
        """All micro-batches of one optimizer step for one rank: (grad_accum, B, T) inputs and targets on
        device. Rank r takes micro-batch indices r * grad_accum + m, disjoint from every other rank's.
        before: micro-batches per rank in the steps before this one, when they held other counts (a batch
        warmup, training.micro_batches_before); by default (step - 1) * grad_accum."""
        start = None if before is None else world * before
        micro = [self.train_batch(step, rank * grad_accum + m, batch_size, world * grad_accum, start)
                 for m in range(grad_accum)]
        xs = torch.stack([x for x, _ in micro])
        ys = torch.stack([y for _, y in micro])
        if torch.device(device).type == "cuda":  # pinned host memory lets the copy overlap the running step
            return xs.pin_memory().to(device, non_blocking=True), ys.pin_memory().to(device, non_blocking=True)
        return xs, ys

    def val_batches(self, n_windows: int, rows: int):
        # The first n_windows consecutive non-overlapping windows of the val split (the same set every time,
        # fewer if the split is shorter), `rows` windows a batch.
        available = (len(self.val) - 1) // self.seq_len
        if available <= 0:
            return
        starts = np.arange(min(available, n_windows)) * self.seq_len
        for i in range(0, len(starts), rows):
            yield self._windows(self.val, starts[i:i + rows])
