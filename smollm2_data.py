"""Corpus -> token ids -> batches.

The corpus is tokenized once and cached as a flat uint16 file under the run's own folder, named by
the corpus' sha256 and the tokenizer's fingerprint (an edited corpus or another tokenizer gets a new
cache; nothing is ever written beside the corpus). The tail `val_fraction` of the ids is held out.

Batches are a pure function of (seed, step, micro-batch index): window offsets come from a NumPy
generator seeded with exactly those numbers. A resumed run therefore sees the batches the
uninterrupted run would have seen, with no loader position to save, and data-parallel ranks take
disjoint micro-batch indices of the same step (rank r, micro-step m -> index r * grad_accum + m).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request

import numpy as np
import torch

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DEFAULT_INPUT = "input.txt"


class DataError(ValueError):
    """Bad corpus or data settings; the message is one line that says what to do."""


def download_tiny_shakespeare(path: str) -> None:
    from tqdm import tqdm

    tmp = f"{path}.part"
    try:
        with urllib.request.urlopen(TINY_SHAKESPEARE_URL, timeout=15) as r:
            total = int(r.headers.get("Content-Length", 0)) or None
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {path}") as bar:
                while chunk := r.read(1 << 16):
                    f.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise DataError(f"{path} is missing and Tiny Shakespeare could not be downloaded ({e.__class__.__name__}); "
                        f"pass --input_file PATH/TO/corpus.txt") from e


def read_corpus(path: str, allow_download: bool = True) -> bytes:
    if not os.path.exists(path):
        if allow_download and os.path.basename(path) == DEFAULT_INPUT:
            download_tiny_shakespeare(path)
        else:
            raise DataError(f"input file {path} does not exist; pass --input_file PATH/TO/corpus.txt")
    if os.path.isdir(path):
        raise DataError(f"input file {path} is a directory; pass a text file with --input_file")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise DataError(f"input file {path} is empty; pass a text corpus with --input_file")
    if b"\x00" in raw[:65536]:
        raise DataError(f"input file {path} looks binary (NUL bytes); pass a UTF-8 text corpus")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"input file {path} is not valid UTF-8 text (byte {e.start}); pass a UTF-8 text corpus") from e
    return raw


def load_token_ids(path: str, tokenizer, cache_dir: str, log=print, allow_download: bool = True) -> np.ndarray:
    """All ids of the corpus as a read-only uint16 memmap, tokenized at most once per (corpus, tokenizer)."""
    raw = read_corpus(path, allow_download)
    key = hashlib.sha256(raw).hexdigest()[:16] + "-" + tokenizer.fingerprint()
    cache = os.path.join(cache_dir, f"tokens-{key}.u16")
    if not os.path.exists(cache):
        if tokenizer.vocab_size > 65536:
            raise DataError(f"vocabulary of {tokenizer.vocab_size} ids does not fit uint16")
        ids = np.asarray(tokenizer.encode(raw.decode("utf-8")), dtype=np.uint16)
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{cache}.tmp.{os.getpid()}"
        ids.tofile(tmp)
        os.replace(tmp, cache)
        log(f"Tokenized {path}: {len(ids):,} ids -> {cache}")
    ids = np.memmap(cache, dtype=np.uint16, mode="r")
    if len(ids) == 0:
        raise DataError(f"input file {path} produced no tokens; pass a text corpus with --input_file")
    return ids


class TokenBatches:
    """Random windows of seq_len + 1 ids from the train or val split."""

    def __init__(self, ids: np.ndarray, seq_len: int, val_fraction: float, seed: int):
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"--val_fraction must be in [0, 1), got {val_fraction}")
        n_val = int(len(ids) * val_fraction)
        self.train = ids[: len(ids) - n_val]
        self.val = ids[len(ids) - n_val:]
        self.seq_len, self.seed = seq_len, seed
        if len(self.train) < seq_len + 1:
            raise DataError(f"the corpus' train split has {len(self.train):,} tokens, fewer than one window of "
                            f"seq_len + 1 = {seq_len + 1}; use a longer corpus or a smaller --seq_len")
        if 0 < len(self.val) < seq_len + 1:
            self.val = self.val[:0]  # too short to evaluate on: report no val loss rather than a wrong one

    def _windows(self, split: np.ndarray, offsets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.seq_len
        rows = np.stack([np.asarray(split[o:o + T + 1], dtype=np.int64) for o in offsets])  # (B, T+1)
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    def train_batch(self, step: int, micro_index: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, T) inputs and (B, T) next-token targets for optimizer step `step` (1-based).
        rng = np.random.default_rng([self.seed, step, micro_index])
        offsets = rng.integers(0, len(self.train) - self.seq_len, size=batch_size)
        return self._windows(self.train, offsets)

    def step_batch(self, step: int, grad_accum: int, batch_size: int, device, rank: int = 0):
        """All micro-batches of one optimizer step for one rank: (grad_accum, B, T) inputs and targets on
        device. Rank r takes micro-batch indices r * grad_accum + m, disjoint from every other rank's."""
        micro = [self.train_batch(step, rank * grad_accum + m, batch_size) for m in range(grad_accum)]
        xs = torch.stack([x for x, _ in micro])
        ys = torch.stack([y for _, y in micro])
        if torch.device(device).type == "cuda":  # pinned host memory lets the copy overlap the running step
            return xs.pin_memory().to(device, non_blocking=True), ys.pin_memory().to(device, non_blocking=True)
        return xs, ys

    def val_batches(self, n_batches: int, batch_size: int):
        # Consecutive non-overlapping windows from the start of the val split: the same set every time.
        n_windows = (len(self.val) - 1) // self.seq_len
        if n_windows == 0:
            return
        starts = np.arange(min(n_windows, n_batches * batch_size)) * self.seq_len
        for i in range(0, len(starts), batch_size):
            yield self._windows(self.val, starts[i:i + batch_size])
