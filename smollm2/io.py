"""File plumbing for everything the repo writes: atomic writes, temporary names, durable renames, hashes.

Every file goes through `atomic_open`: written to <path>.tmp.<pid> in the same folder, flushed,
fsynced, then renamed over <path>, and the folder fsynced, so a reader (or a run after a crash) sees
the old file or the new one, never a part. The pid in the temporary's name says whose it is:
remove_stale_temporaries deletes those of processes that are gone (a killed save, cache write or export)
and leaves a live writer's alone.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import re
import shutil
from contextlib import contextmanager
from typing import IO, Callable, Iterator, Optional

TMP_RE = re.compile(r"\.tmp\.(\d+)$")


def tmp_name(path: str) -> str:
    return f"{path}.tmp.{os.getpid()}"


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


@contextmanager
def atomic_open(path: str, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """A file object for writing `path` all at once: renamed into place when the block ends, deleted if it raises."""
    tmp = tmp_name(path)
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str, prefix: str = "") -> list[str]:
    """Delete <name>.tmp.<pid> files and folders in `folder` (not below) whose process is gone.
    Names without that suffix, and live writers', stay."""
    removed = []
    names = os.listdir(folder) if os.path.isdir(folder) else []
    for name in names:
        m = TMP_RE.search(name)
        if not m or not name.startswith(prefix) or _pid_alive(int(m.group(1))):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
        removed.append(path)
    return removed


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- results tables
def write_table(path_stem: str, rows: list[dict]) -> None:
    """rows as <stem>.json and <stem>.csv, each written atomically (lists and dicts JSON-encoded in the CSV)."""
    folder = os.path.dirname(os.path.abspath(path_stem))
    os.makedirs(folder, exist_ok=True)
    with atomic_open(path_stem + ".json", "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_open(path_stem + ".csv", "w", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})


def merge_table(path_stem: str, rows: list[dict], key: Callable[[dict], object],
                order: Optional[Callable[[dict], object]] = None) -> list[dict]:
    """Write rows into <stem>.json/.csv, replacing the earlier rows with the same key(row); returns all rows.
    Runs on one machine that share a table take turns (a lock on its folder), so none loses another's rows."""
    folder = os.path.dirname(os.path.abspath(path_stem))
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        old = []
        if os.path.exists(path_stem + ".json"):
            with open(path_stem + ".json", encoding="utf-8") as f:
                old = json.load(f)
        new_keys = {key(r) for r in rows}
        merged = [r for r in old if key(r) not in new_keys] + rows
        if order is not None:
            merged.sort(key=order)
        write_table(path_stem, merged)
    finally:
        os.close(fd)
    return merged
