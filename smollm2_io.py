"""File plumbing shared by checkpoints and token shards: durable renames, atomic small files, hashes."""

from __future__ import annotations

import hashlib
import os


def fsync_dir(folder: str) -> None:
    """Make a rename inside `folder` durable (a crash right after os.replace keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a part (through
    <path>.tmp, which the next write replaces; smollm2_prepare clears an interrupted run's *.tmp)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
