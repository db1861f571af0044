"""The on-disk format of a prepared dataset: token shards and the manifest that lists them.

A dataset folder holds
  train_00000.bin, train_00001.bin, ...   token shards of the training split
  val_00000.bin, ...                      shards of the held-out documents (none in "tail" mode)
  manifest.json                           what the folder was made from and how, with a checksum
  prepare.lock                            flock: held exclusively by the preparation writing the folder,
                                          shared by every training run reading it (FolderLock)

A shard is one file: a 64-byte header, the ids, then the document-ends index.
  header: magic b"SMOLTOKS", format version (u32), bytes per id (u32: 2 = uint16, 4 = uint32),
          number of ids (u64), number of document ends (u64), zero padding; all little-endian
  ids:    n_tokens x uint16/uint32; every document is followed by the tokenizer's end-of-text id
  index:  n_docs x uint64, the offset one past each document's end-of-text id within this shard
          (a document may begin in an earlier shard; one that continues into the next has no end here)
The size of a shard is therefore fixed by its header, so a truncated file is caught without hashing.

The manifest's `checksum` is the sha256 of its own canonical JSON without that field: a hand edit is
caught at load time. The dataset's fingerprint (what a checkpoint records) is that checksum.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from smollm2.common import SmolError
from smollm2.io import atomic_write_text, file_sha256, fsync_dir, tmp_name

MAGIC = b"SMOLTOKS"
SHARD_VERSION = 1
MANIFEST_FORMAT = "smollm2-token-shards"
MANIFEST_VERSION = 1
MANIFEST = "manifest.json"
PREPARE_LOCK = "prepare.lock"
HEADER = struct.Struct("<8sIIQQ")  # magic, version, bytes per id, n_tokens, n_docs
HEADER_BYTES = 64
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


class DataError(SmolError, ValueError):
    """Bad corpus, shards or data settings; the message is one line that says what to do."""

    code = 2


def token_bytes_for(vocab_size: int) -> int:
    """2 (uint16) when every id fits, else 4 (uint32): never a silent overflow."""
    return 2 if vocab_size <= 1 << 16 else 4


@dataclass(frozen=True)
class ShardInfo:
    path: str
    token_bytes: int
    n_tokens: int
    n_docs: int

    @property
    def dtype(self) -> np.dtype:
        return DTYPES[self.token_bytes]

    @property
    def ids_offset(self) -> int:
        return HEADER_BYTES

    @property
    def size(self) -> int:
        return HEADER_BYTES + self.n_tokens * self.token_bytes + 8 * self.n_docs


def pack_header(token_bytes: int, n_tokens: int, n_docs: int) -> bytes:
    return HEADER.pack(MAGIC, SHARD_VERSION, token_bytes, n_tokens, n_docs).ljust(HEADER_BYTES, b"\0")


def read_header(path: str) -> ShardInfo:
    """The header of a shard, checked against the file's size (a truncated or padded shard fails)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
        size = os.path.getsize(path)
    except OSError as e:
        raise DataError(f"shard {path} cannot be read ({e.strerror}); prepare the dataset again") from e
    if len(raw) < HEADER_BYTES or raw[:8] != MAGIC:
        raise DataError(f"{path} is not a token shard (bad header); prepare the dataset again")
    _, version, token_bytes, n_tokens, n_docs = HEADER.unpack(raw[:HEADER.size])
    if version != SHARD_VERSION or token_bytes not in DTYPES:
        raise DataError(f"{path} has shard version {version} / {token_bytes}-byte ids that this code does not read; "
                        f"prepare the dataset again with this repo")
    info = ShardInfo(path, token_bytes, n_tokens, n_docs)
    if size != info.size:
        raise DataError(f"shard {path} is {size:,} bytes, its header says {info.size:,} (truncated or damaged); "
                        f"prepare the dataset again")
    return info


def read_doc_ends(info: ShardInfo) -> np.ndarray:
    """(n_docs,) uint64: offsets one past each document's end-of-text id, within the shard."""
    with open(info.path, "rb") as f:
        f.seek(HEADER_BYTES + info.n_tokens * info.token_bytes)
        return np.frombuffer(f.read(8 * info.n_docs), dtype="<u8")


def read_ids(info: ShardInfo, start: int = 0, count: int | None = None) -> np.ndarray:
    """ids[start:start+count] of one shard, read with pread (nothing stays mapped, so RSS stays flat)."""
    count = info.n_tokens - start if count is None else count
    fd = os.open(info.path, os.O_RDONLY)
    try:
        buf = os.pread(fd, count * info.token_bytes, HEADER_BYTES + start * info.token_bytes)
    finally:
        os.close(fd)
    return np.frombuffer(buf, dtype=info.dtype)


class ShardWriter:
    """Appends ids to smollm2.io.tmp_name(path); close() writes the index and header, fsyncs and renames into place.
    Memory stays bounded: ids go to disk as they come, only the document ends are kept (8 bytes each)."""

    def __init__(self, path: str, token_bytes: int):
        self.path, self.token_bytes = path, token_bytes
        self.tmp = tmp_name(path)
        self.f = open(self.tmp, "wb")
        self.f.write(b"\0" * HEADER_BYTES)
        self.n_tokens = 0
        self.doc_ends: list[int] = []

    def write(self, ids: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(ids, dtype=DTYPES[self.token_bytes]).tobytes())
        self.n_tokens += len(ids)

    def end_document(self) -> None:
        self.doc_ends.append(self.n_tokens)

    def close(self) -> dict[str, Any]:
        """Finish the shard; returns its manifest entry (file, tokens, documents, sha256)."""
        self.f.write(np.asarray(self.doc_ends, dtype="<u8").tobytes())
        self.f.seek(0)
        self.f.write(pack_header(self.token_bytes, self.n_tokens, len(self.doc_ends)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        return {"file": os.path.basename(self.path), "tokens": self.n_tokens, "documents": len(self.doc_ends),
                "sha256": file_sha256(self.path)}

    def abandon(self) -> None:
        try:
            self.f.close()
        except OSError:  # the flush of what failed to write (a full disk) fails again: the file goes anyway
            pass
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


# ----------------------------------------------------------------------------- one writer, or readers
class FolderLock:
    """An flock on <folder>/prepare.lock: exclusive while a preparation writes the folder, shared while a
    training run reads it. So a second preparation, or one with other settings, never mixes its shards into
    a folder being written, and a run's shards are never rewritten under it. The kernel drops the lock with
    the process (SIGKILL included). A read-only folder takes no reader's lock: nobody can rewrite it."""

    def __init__(self, folder: str, exclusive: bool):
        self.folder, self.exclusive, self.fd = folder, exclusive, None
        path = os.path.join(folder, PREPARE_LOCK)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if exclusive:
                raise DataError(f"cannot create {path} ({e.strerror}); make {folder} writable or pick another "
                                f"--out_dir") from e
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise FolderBusy(folder, holder, exclusive) from None
        try:  # no preparation holds it now: a name left by a killed one is stale
            os.ftruncate(fd, 0)
            if exclusive:
                os.pwrite(fd, f"prepare_data pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass
        self.fd = fd

    def shared(self) -> None:
        """Exclusive -> shared: the preparation is done, the folder may be read (and not rewritten)."""
        if self.fd is not None and self.exclusive:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_SH)
            self.exclusive = False

    def close(self) -> None:
        if self.fd is not None:
            if self.exclusive:
                os.ftruncate(self.fd, 0)  # names no holder once none holds it
            os.close(self.fd)
            self.fd = None


class FolderBusy(DataError):
    def __init__(self, folder: str, holder: str, wanted_exclusive: bool):
        self.writer = bool(holder)  # only a preparation writes its name into the file
        if self.writer:
            msg = (f"{folder} is being prepared by another process ({holder}); wait for it to finish, or pick "
                   f"another --out_dir")
        else:
            msg = (f"{folder} is being read by a training run; it is not rewritten under a run: wait for the "
                   f"run to end, or prepare into another --out_dir")
        super().__init__(msg)


def shard_problem(folder: str, manifest: dict[str, Any]) -> Optional[str]:
    """Why the shards the manifest lists are not all there and whole (missing, truncated, or another sha256
    than recorded: every byte is hashed), or None."""
    for split in ("train", "val"):
        for entry in manifest["shards"][split]:
            shard = os.path.join(folder, entry["file"])
            if not os.path.exists(shard):
                return f"shard {entry['file']} is missing"
            try:
                info = read_header(shard)
            except DataError as e:
                return str(e).split("; ")[0]
            if (info.n_tokens, info.n_docs) != (entry["tokens"], entry["documents"]) or \
                    file_sha256(shard) != entry["sha256"]:
                return f"shard {entry['file']} does not match its sha256 in the manifest (changed or damaged)"
    return None


# ----------------------------------------------------------------------------- manifest
def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False)


def with_checksum(manifest: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return {**body, "checksum": hashlib.sha256(canonical_json(body).encode()).hexdigest()}


def write_manifest(folder: str, manifest: dict[str, Any]) -> dict[str, Any]:
    manifest = with_checksum(manifest)
    atomic_write_text(os.path.join(folder, MANIFEST), canonical_json(manifest) + "\n")
    return manifest


def load_manifest(path: str) -> dict[str, Any]:
    """manifest.json of a prepared folder (the folder or the file itself), its checksum verified."""
    path = os.path.join(path, MANIFEST) if os.path.isdir(path) else path
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError as e:
        raise DataError(f"{path} does not exist; run prepare_data.py first") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable manifest ({str(e).splitlines()[0][:120]}); "
                        f"prepare the dataset again") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path} is not a manifest written by prepare_data.py")
    if manifest.get("format_version", 0) > MANIFEST_VERSION:
        raise DataError(f"{path} has format_version {manifest['format_version']}, newer than this code; update the repo")
    if with_checksum(manifest)["checksum"] != manifest.get("checksum"):
        raise DataError(f"{path} does not match its checksum (edited by hand?); prepare the dataset again")
    return manifest


def is_prepared(path: str) -> bool:
    """Whether `path` is a prepared dataset folder or its manifest.json."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, MANIFEST))
    return os.path.basename(path) == MANIFEST
