"""File plumbing for everything the repo writes: atomic writes, temporary names, durable renames, hashes.

Every file goes through `atomic_open`: written to <path>.tmp.<pid> in the same folder, flushed,
fsynced, then renamed over <path>, and the folder fsynced, so a reader (or a run after a crash) sees
the old file or the new one, never a part. The pid in the temporary's name says whose it is:
remove_stale_temporaries deletes those of processes that are gone (a killed save, cache write or export)
and leaves a live writer's alone.
"""

from __future__ import annotations

import csv
import errno
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


def write_if_changed(path: str, data: bytes) -> bool:
    """Write `path` atomically (its folder made) unless it already holds `data`; whether it wrote."""
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except OSError:  # absent or unreadable: written anew
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, data)
    return True


class LineFile:
    """A file that only ever grows by whole lines (train.log, metrics.jsonl): each line goes out in one
    unbuffered write, and a write that fails midway (disk full, a file-size limit) is cut back to where it
    began, so the file never holds a torn line that later appends would run into. Nothing is buffered in
    the process, so closing after a failure cannot fail again."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write_line(self, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        start = os.fstat(self.fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            try:
                os.ftruncate(self.fd, start)
            except OSError:
                pass
            raise

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def set_aside_torn_line(path: str) -> Optional[str]:
    """A line file whose last line was cut short (a killed process, a full disk before LineFile): move that
    tail to <path>.torn and cut the file back to its last complete line. Returns what was done, or None."""
    try:
        with open(path, "rb+") as f:
            data = f.read()  # a line file: one line per log interval, small
            if not data or data.endswith(b"\n"):
                return None
            cut = data.rfind(b"\n") + 1
            torn = data[cut:]
            with open(path + ".torn", "ab") as aside:
                aside.write(torn + b"\n")
            f.truncate(cut)
    except FileNotFoundError:
        return None
    return (f"REPAIRED: the last line of {os.path.basename(path)} was cut short ({len(torn):,} bytes, a run "
            f"stopped mid-write); moved to {os.path.basename(path)}.torn")


NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_failure_advice(err: OSError, folder: str) -> str:
    """What to do about a failed write, from what the error is (not every failed write is a full disk)."""
    if err.errno in NO_SPACE:
        return "free disk space (or raise the file-size limit)"
    if err.errno in NO_PERMISSION:
        return f"make {folder} writable"
    return f"check {folder} ({errno.errorcode.get(err.errno, 'unknown error')})"


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


def refuse_to_replace(folder: str, flag: str, ours: Callable[[str], bool]) -> None:
    """The guard before a folder is deleted and replaced whole: never `/`, the home folder, this checkout or a
    folder above it, a folder holding .git (a clone, a Space repository), nor a non-empty folder that `ours`
    does not recognise as one this repo wrote. Raises ValueError with one line naming the folder."""
    if not os.path.lexists(folder):
        return
    real = os.path.realpath(folder)
    repo = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    protected = {os.path.realpath(os.sep), os.path.realpath(os.path.expanduser("~"))}
    how = f"pick a new or empty {flag}; nothing was deleted"
    if not os.path.isdir(real):
        raise ValueError(f"{flag} {folder} exists and is not a folder; {how}")
    if real in protected or real == repo or repo.startswith(real.rstrip(os.sep) + os.sep):
        raise ValueError(f"{flag} {folder} is {'this checkout or a folder above it' if real not in protected else real}: "
                         f"writing there would delete it whole; {how}")
    if os.path.exists(os.path.join(real, ".git")):
        raise ValueError(f"{flag} {folder} holds .git (a repository of yours): writing there would delete it; {how}")
    if os.listdir(real) and not ours(real):
        names = sorted(os.listdir(real))
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        raise ValueError(f"{flag} {folder} holds files this repo did not write ({shown}); {how}")


def remove_folder(folder: str, flag: str, ours: Callable[[str], bool]) -> None:
    """Delete `folder` whole, through the one guard every delete of this repo takes (refuse_to_replace):
    raises ValueError, deleting nothing, where the folder is one the guard protects."""
    refuse_to_replace(folder, flag, ours)
    if os.path.isdir(folder):
        shutil.rmtree(folder)


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
