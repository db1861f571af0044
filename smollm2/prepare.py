"""Raw documents -> a folder of token shards (the format is in smollm2/shards.py).

The pipeline: the main process reads documents in pieces (smollm2.sources), batches them, and hands
the batches to a pool of worker processes, each with its own encoder: tiktoken running the tokenizer's
BPE when smollm2.tiktoken_bpe proves it equal (about 4x faster), else tokenizers' `encode_batch` (one
encoder per process scales where one shared tokenizer's threads do not: tokenizers #1900).
At most 2 x workers batches are in flight and results are taken in submission order, so memory is
bounded and the output is the same whatever the timing. Each document is followed by the end-of-text
id. Documents go to the validation split whole, each with probability `val_fraction` (a keyed hash of
the seed and the document's index; never the first document) until `val_tokens` are held out. A
corpus where that picks nothing (one document, like Tiny Shakespeare) holds out the tail of its
stream instead: the last val_fraction of its text tokens and the end-of-text id after them.

Interruptible: a train shard is closed at the first piece boundary past `shard_tokens`; then the val
ids gathered so far are closed into their own shard and `progress.json` records where reading stands.
A rerun after Ctrl-C or SIGKILL deletes the unfinished temporaries (smollm2.io.remove_stale_temporaries), skips the pieces already
written (reading, not tokenizing, them) and ends byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np

from smollm2 import tiktoken_bpe
from smollm2.io import atomic_write_text, file_sha256, remove_stale_temporaries
from smollm2.shards import (MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, DataError, FolderBusy, FolderLock,
                            ShardWriter, load_manifest, read_header, shard_problem, token_bytes_for, write_manifest)
from smollm2.sources import HF_PREFIX, MAX_PIECE_CHARS, Piece, expand_inputs, load_hf_dataset, read_pieces

EOS_TOKEN = "<|endoftext|>"
PROGRESS = "progress.json"
ENCODERS = ("auto", "tiktoken", "tokenizers")
BATCH_CHARS = 1 << 18  # text per worker task: amortises the pickling; larger batches only add worker memory


@dataclass(frozen=True)
class PrepareSettings:
    text_field: str = "text"
    val_fraction: float = 0.1
    val_tokens: int = 10_000_000  # at most this many ids held out (whole documents, or the tail)
    seed: int = 1337  # picks the held-out documents
    shard_tokens: int = 100_000_000
    max_piece_chars: int = MAX_PIECE_CHARS

    def check(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"--val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_tokens < 0 or self.shard_tokens < 1 or self.max_piece_chars < 1:
            raise DataError("--val_tokens must be >= 0 and --shard_tokens >= 1")


# ----------------------------------------------------------------------------- worker side
_worker_tok = None


def _die_with_parent() -> None:
    """Linux: the kernel sends this worker SIGKILL when the process that forked it dies, so a killed
    preparation leaves no orphaned tokenizers behind."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # elsewhere a worker ends when it finds its task queue closed


def _init_worker(tokenizer_json: str, encoder: str, in_pool: bool = True) -> None:
    global _worker_tok
    if in_pool:
        _die_with_parent()
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from the processes
    if encoder == "tiktoken":
        _worker_tok = tiktoken_bpe.build(tokenizer_json)[0].encode_batch  # proven equal by pick_encoder
    else:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_str(tokenizer_json)
        # encode_batch_fast skips the character offsets, which nothing here reads (tokenizers >= 0.21).
        batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
        _worker_tok = lambda texts: [e.ids for e in batch(texts, add_special_tokens=False)]  # noqa: E731


def _encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All ids of a batch concatenated (uint32) and each text's id count."""
    arrays = [np.array(ids, dtype=np.uint32) for ids in _worker_tok(texts)]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    return (np.concatenate(arrays) if arrays else np.zeros(0, np.uint32)), lengths


class _InProcess:
    """The pool's interface without processes (workers=0: tests, and a check that the pool is exact)."""

    def __init__(self, tokenizer_json: str, encoder: str):
        _init_worker(tokenizer_json, encoder, in_pool=False)

    def submit(self, fn, *args) -> Future:
        done = Future()
        done.set_result(fn(*args))
        return done

    def shutdown(self, cancel_futures: bool = False):
        pass


def _pool(workers: int, tokenizer_json: str, encoder: str):
    if workers == 0:
        return _InProcess(tokenizer_json, encoder)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(tokenizer_json, encoder))


def pick_encoder(tokenizer_json: str, encoder: str, log: Callable[[str], None]) -> str:
    """"tiktoken" or "tokenizers" for the workers. auto: tiktoken when it is installed and proven equal to
    this tokenizer (smollm2.tiktoken_bpe.build), else tokenizers; asking for tiktoken when it is not is an error."""
    if encoder not in ENCODERS:
        raise DataError(f"--encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    if encoder == "tokenizers":
        return encoder
    enc, why = tiktoken_bpe.build(tokenizer_json)
    if enc is not None:
        return "tiktoken"
    if encoder == "tiktoken":
        raise DataError(f"--encoder tiktoken cannot run this tokenizer: {why}; use --encoder tokenizers")
    log(f"encoder: tokenizers (tiktoken not used: {why})")
    return "tokenizers"


# ----------------------------------------------------------------------------- main side
def eos_id_of(tokenizer) -> int:
    eos = tokenizer.tokenizer.token_to_id(EOS_TOKEN)
    if eos is None:
        raise DataError(f"tokenizer {tokenizer.source} has no {EOS_TOKEN} token to end documents with")
    assert tokenizer.tokenizer.id_to_token(eos) == EOS_TOKEN
    return eos


def held_out(seed: int, doc_index: int, fraction: float) -> bool:
    """Whether document `doc_index` goes to validation: a keyed hash, the same on every machine."""
    if doc_index == 0 or fraction <= 0:
        return False
    h = hashlib.blake2b(f"{seed}:{doc_index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") < fraction * 2.0 ** 64


def describe_sources(paths: list[str], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Path, size and content hash of every input (an `hf:` dataset: its Arrow size and fingerprint)."""
    files = [p for p in paths if not p.startswith(HF_PREFIX)]
    total = sum(os.path.getsize(p) for p in files)
    if total > 1 << 30:
        log(f"hashing {len(files)} input files ({total / 1e9:.1f} GB) ...")
    out = []
    for p in paths:
        if p.startswith(HF_PREFIX):
            ds = load_hf_dataset(p)
            out.append({"path": p, "bytes": int(ds.data.nbytes), "sha256": ds._fingerprint})
        else:
            out.append({"path": p, "bytes": os.path.getsize(p), "sha256": file_sha256(p)})
    return out


def job_key(sources: list[dict], tokenizer_fp: str, settings: PrepareSettings) -> str:
    """What the output is a function of: inputs' content, tokenizer and settings (not paths or workers)."""
    key = {"sources": [s["sha256"] for s in sources], "tokenizer": tokenizer_fp, "settings": asdict(settings),
           "format_version": MANIFEST_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class _Splits:
    """The train and val shard writers and the state that progress.json records between shards."""

    def __init__(self, out_dir: str, token_bytes: int, eos: int, settings: PrepareSettings, state: dict[str, Any]):
        self.out_dir, self.token_bytes, self.eos, self.settings = out_dir, token_bytes, eos, settings
        self.state = state
        self.writers: dict[str, Optional[ShardWriter]] = {"train": None, "val": None}

    def _writer(self, split: str) -> ShardWriter:
        if self.writers[split] is None:
            n = len(self.state["shards"][split])
            self.writers[split] = ShardWriter(os.path.join(self.out_dir, f"{split}_{n:05d}.bin"), self.token_bytes)
        return self.writers[split]

    def add(self, piece: Piece, ids: np.ndarray) -> None:
        st = self.state
        if st["in_doc"] is None:  # the first piece of a document decides where all of it goes
            val = st["val_tokens"] < self.settings.val_tokens and held_out(self.settings.seed, st["documents"],
                                                                           self.settings.val_fraction)
            st["in_doc"] = "val" if val else "train"
        split = st["in_doc"]
        if self.token_bytes == 2 and len(ids) and int(ids.max()) > 0xFFFF:
            raise DataError(f"id {int(ids.max())} does not fit the uint16 shards; this tokenizer needs uint32")
        w = self._writer(split)
        w.write(ids)
        st["tokens"][split] += len(ids)
        if piece.last:
            w.write(np.array([self.eos]))
            w.end_document()
            st["tokens"][split] += 1
            st["docs"][split] += 1
            st["documents"] += 1
            st["in_doc"] = None
        if split == "val":
            st["val_tokens"] += len(ids) + piece.last
        st["pieces"] += 1

    def train_shard_full(self) -> bool:
        w = self.writers["train"]
        return w is not None and w.n_tokens >= self.settings.shard_tokens

    def commit(self) -> None:
        """Close the open shards and record the reading position: what a rerun starts from."""
        for split, w in self.writers.items():
            if w is not None and w.n_tokens:
                self.state["shards"][split].append(w.close())
            elif w is not None:
                w.abandon()
            self.writers[split] = None
        atomic_write_text(os.path.join(self.out_dir, PROGRESS), json.dumps(self.state, sort_keys=True))

    def abandon(self) -> None:
        for w in self.writers.values():
            if w is not None:
                w.abandon()


def _batches(pieces: Iterator[Piece], batch_chars: int) -> Iterator[list[Piece]]:
    batch, size = [], 0
    for p in pieces:
        batch.append(p)
        size += len(p.text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _all_pieces(sources: list[dict], settings: PrepareSettings, skip: int, on_bytes: Callable[[int], None]):
    """Every piece of every source after the first `skip`. on_bytes(n) reports reading progress: the
    characters read (about the bytes of plain text), settled to each file's size when it ends."""
    seen = 0
    for src in sources:
        counted = 0
        for piece in read_pieces(src["path"], settings.text_field, settings.max_piece_chars):
            step = min(len(piece.text), src["bytes"] - counted)
            counted += step
            on_bytes(step)
            if seen >= skip:
                yield piece
            seen += 1
        on_bytes(src["bytes"] - counted)


def _tail_split(state: dict[str, Any], settings: PrepareSettings) -> dict[str, Any]:
    text_tokens = state["tokens"]["train"] - state["docs"]["train"]
    n = min(int(text_tokens * settings.val_fraction), settings.val_tokens)
    if n == 0:
        return {"mode": "none", "tokens": 0}
    return {"mode": "tail", "tokens": n + 1}  # the last n text ids and the end-of-text id closing them


def _foreign_manifest(out_dir: str) -> bool:
    """A manifest.json there that prepare_data.py did not write (the user's own file): never deleted."""
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            return json.load(f).get("format") != MANIFEST_FORMAT
    except FileNotFoundError:
        return False
    except (OSError, ValueError, AttributeError):
        return True


def _finished(out_dir: str, key: str) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(the manifest, None) when out_dir holds this exact job with every shard whole; else (None, why not)."""
    try:
        manifest = load_manifest(os.path.join(out_dir, MANIFEST))
    except DataError as e:
        return None, str(e)
    if manifest.get("job_key") != key:
        return None, "other inputs, tokenizer or settings"
    problem = shard_problem(out_dir, manifest)
    return (manifest, None) if problem is None else (None, problem)


def _check_existing(out_dir: str, key: str, overwrite: bool, log) -> Optional[dict[str, Any]]:
    """The finished manifest when `out_dir` already holds this exact job and every shard checks out; a
    missing or damaged shard of it is rebuilt (the folder is this job's); another job's folder is refused
    unless overwrite. Called with the folder's lock held exclusively."""
    manifest_path = os.path.join(out_dir, MANIFEST)
    progress_path = os.path.join(out_dir, PROGRESS)
    found = None
    if os.path.exists(manifest_path):
        manifest, why = _finished(out_dir, key)
        if manifest is not None:
            return manifest
        try:
            found = load_manifest(manifest_path)["job_key"]
        except (DataError, KeyError):
            found = "unreadable"
        if found == key:
            log(f"{out_dir}: {why}; rebuilding it")
            found = "damaged"
    elif os.path.exists(progress_path):
        try:
            with open(progress_path) as f:
                found = json.load(f)["job_key"]
        except (OSError, ValueError, KeyError):
            found = "unreadable"
    if found not in (None, key):
        if found != "damaged" and not overwrite:
            raise DataError(f"{out_dir} holds a dataset prepared from other inputs, tokenizer or settings; "
                            f"pass --overwrite 1 to rebuild it, or another --out_dir")
        if found != "damaged":
            log(f"overwriting {out_dir}: its inputs, tokenizer or settings changed")
        for p in glob.glob(os.path.join(out_dir, "*_[0-9][0-9][0-9][0-9][0-9].bin")) + [manifest_path, progress_path]:
            if os.path.exists(p):
                os.remove(p)
    return None


def _load_progress(out_dir: str, key: str) -> Optional[dict[str, Any]]:
    path = os.path.join(out_dir, PROGRESS)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        state = json.load(f)
    if state.get("job_key") != key:
        return None
    for split in ("train", "val"):  # trust only shards that are whole
        for entry in state["shards"][split]:
            read_header(os.path.join(out_dir, entry["file"]))
    return state


def prepare(inputs: list[str], out_dir: str, tokenizer, settings: PrepareSettings = PrepareSettings(),
            workers: Optional[int] = None, overwrite: bool = False, log: Callable[[str], None] = print,
            progress_bar: bool = True, sources: Optional[list[dict]] = None, encoder: str = "auto") -> dict[str, Any]:
    """Tokenize `inputs` into shards under `out_dir`; returns the manifest. Resumes an interrupted run
    of the same job; returns at once when the job is already done and every shard checks out (a missing
    or damaged one is rebuilt). One preparation per folder, and none while a training run reads it
    (smollm2.shards.FolderLock). `sources`: describe_sources() of the inputs when the caller has it already
    (hashing a large corpus twice costs seconds). `encoder`: which library turns text into ids
    (pick_encoder); the ids are the same, so it is not part of the job."""
    settings.check()
    sources = sources or describe_sources(expand_inputs(inputs, log), log)
    tok_fp = tokenizer.fingerprint()
    key = job_key(sources, tok_fp, settings)
    os.makedirs(out_dir, exist_ok=True)
    if _foreign_manifest(out_dir):
        raise DataError(f"{out_dir} holds a manifest.json that prepare_data.py did not write; it is not deleted: "
                        f"pick another --out_dir")
    try:
        lock = FolderLock(out_dir, exclusive=True)
    except FolderBusy as busy:
        if busy.writer:
            raise
        with_readers = FolderLock(out_dir, exclusive=False)  # only runs read it: it may be up to date
        try:
            done, _ = _finished(out_dir, key)
        finally:
            with_readers.close()
        if done is None:
            raise
        log(f"{out_dir} is up to date ({done['totals']['tokens']:,} tokens from {len(sources)} files); nothing to do")
        return done
    try:
        return _prepare_locked(out_dir, key, tokenizer, tok_fp, settings, sources, inputs, workers, overwrite, log,
                               progress_bar, encoder)
    finally:
        lock.close()


def _prepare_locked(out_dir, key, tokenizer, tok_fp, settings, sources, inputs, workers, overwrite, log,
                    progress_bar, encoder) -> dict[str, Any]:
    done = _check_existing(out_dir, key, overwrite, log)
    if done is not None:
        log(f"{out_dir} is up to date ({done['totals']['tokens']:,} tokens from {len(sources)} files, every shard "
            f"checked); nothing to do")
        return done
    remove_stale_temporaries(out_dir)  # an interrupted run's unfinished files

    eos = eos_id_of(tokenizer)
    token_bytes = token_bytes_for(tokenizer.vocab_size)
    state = _load_progress(out_dir, key)
    if state is not None:
        log(f"resuming: {len(state['shards']['train'])} train shards already written, "
            f"skipping {state['pieces']:,} pieces")
    else:
        state = {"job_key": key, "pieces": 0, "documents": 0, "in_doc": None, "val_tokens": 0,
                 "tokens": {"train": 0, "val": 0}, "docs": {"train": 0, "val": 0}, "shards": {"train": [], "val": []}}
    workers = os.cpu_count() if workers is None else workers
    splits = _Splits(out_dir, token_bytes, eos, settings, state)
    bar = _progress(sum(s["bytes"] for s in sources), progress_bar)
    t0, start_tokens = time.perf_counter(), state["tokens"]["train"] + state["tokens"]["val"]
    tokenizer_json = tokenizer.definition
    encoder = pick_encoder(tokenizer_json, encoder, log)
    pool = _pool(workers, tokenizer_json, encoder)
    inflight: collections.deque = collections.deque()
    try:
        def drain_one() -> None:
            batch, fut = inflight.popleft()
            ids, lengths = fut.result()
            ends = np.cumsum(lengths)
            for piece, end, n in zip(batch, ends, lengths):
                splits.add(piece, ids[end - n:end])
                if splits.train_shard_full():
                    splits.commit()
            if bar is not None:
                done_tokens = state["tokens"]["train"] + state["tokens"]["val"]
                bar.set_postfix_str(f"docs {state['documents']:,} | tokens {done_tokens:,} | "
                                    f"{(done_tokens - start_tokens) / (time.perf_counter() - t0) / 1e6:.2f}M tok/s",
                                    refresh=False)

        pieces = _all_pieces(sources, settings, state["pieces"], lambda n: bar.update(n) if bar else None)
        for batch in _batches(pieces, BATCH_CHARS):
            inflight.append((batch, pool.submit(_encode, [p.text for p in batch])))
            while len(inflight) > 2 * max(workers, 1):
                drain_one()
        while inflight:
            drain_one()
        splits.commit()
    except BaseException:
        splits.abandon()
        pool.shutdown(cancel_futures=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    pool.shutdown()

    if state["tokens"]["train"] == 0:
        raise DataError(f"{' '.join(inputs)} produced no training tokens; pass a larger corpus or lower --val_fraction")
    val = ({"mode": "documents", "tokens": state["tokens"]["val"]} if state["shards"]["val"]
           else _tail_split(state, settings))
    manifest = {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "job_key": key,
        "tokenizer": {"source": tokenizer.source, "fingerprint": tok_fp, "vocab_size": tokenizer.vocab_size},
        "eos_id": eos, "dtype": "uint16" if token_bytes == 2 else "uint32", "settings": asdict(settings),
        "sources": sources, "shards": state["shards"], "val": val,
        "totals": {"tokens": state["tokens"]["train"] + state["tokens"]["val"], "documents": state["documents"],
                   "train_tokens": state["tokens"]["train"] - val["tokens"] * (val["mode"] == "tail"),
                   "val_tokens": val["tokens"], "train_documents": state["docs"]["train"],
                   "val_documents": state["docs"]["val"]},
    }
    manifest = write_manifest(out_dir, manifest)
    os.remove(os.path.join(out_dir, PROGRESS))
    dt = time.perf_counter() - t0
    log(f"prepared {manifest['totals']['tokens']:,} tokens from {state['documents']:,} documents in {dt:.1f}s "
        f"({(manifest['totals']['tokens'] - start_tokens) / max(dt, 1e-9) / 1e6:.2f}M tokens/s, {workers} workers, "
        f"{encoder}) "
        f"-> {out_dir}")
    return manifest


def _progress(total_bytes: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="preparing", dynamic_ncols=True, mininterval=1.0)
