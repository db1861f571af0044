"""A training run's folder (--out_dir): one run at a time, never replaced by accident, no stale leftovers.

  train.lock  flock(LOCK_EX) held by the training process (rank 0) for its whole life. The kernel drops
              the lock when the process dies, SIGKILL included, so a killed run never leaves the folder
              locked; the file names its holder (pid, host, start) for the error a second run prints.
  run.json    the run id, made when a run starts from scratch and kept across resumes. Every checkpoint
              carries it, and a resume falls back only to step files of the same run.
  checkpoints/ with a checkpoint in it is what "holds a run" means: --resume 0 refuses such a folder
              unless --overwrite 1, which first deletes that run's checkpoints, run.json, train.log and metrics.jsonl.
              (A train.log alone holds no weights: a fresh clone's committed log is appended to.)
Temporaries named <name>.tmp.<pid> whose process is gone (a killed save or cache write) are deleted when
the next run takes the lock.

What a resumed run may change (RULES: each option's rule, declared beside it in smollm2/options.py, and the
settings that are no option), and the one comparison that applies it.

A resume continues the saved run exactly only while the data order, the model and the meaning of a step
stay as they were. Every train.py setting is classified (tests/test_reliability.py checks that none is
missing):
  fixed    the checkpoint cannot even be loaded otherwise (architecture, implementation, optimizer): always
           refused (a different --optimizer in one line of its own)
  refused  changes the data order, the model's training or what a step does: refused (exit 2) unless
           --allow_config_change 1, and then logged as a WARNING
  allowed  the schedule's horizon, cadences, speed switches, paths: allowed and logged
  ignored  how this command was invoked, not a property of the run
The data's identity (the dataset's fingerprint: a hash of the inputs' content, the tokenizer and the
split settings) and the model's architecture take part as `data.*` and `model.*` entries.

Where a run starts (prepare_run): the folder locked, then a checkpoint of the same run whose settings allow an
exact continuation, or an empty folder; and the log it writes (Logger: stdout and train.log, rank 0).
"""

from __future__ import annotations

import datetime
import fcntl
import glob
import json
import os
import secrets
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from smollm2.checkpoint import RESUME_KEYS, CheckpointError, load_latest
from smollm2.common import UsageError
from smollm2.data import expected_fingerprint
from smollm2.io import LineFile, atomic_write_text, remove_stale_temporaries, tmp_name
from smollm2.metrics import LOG_FILE, METRICS_FILE
from smollm2.muon import VARIANTS
from smollm2.options import ALLOWED, FIXED, IGNORED, NOT_RECORDED, OPTIONS, REFUSED
from smollm2.tokenizer import load_tokenizer
from smollm2.training import DEFAULT_DOC_MASK, DEFAULT_MUON_VARIANT, WARMUP_MAX_STEPS, default_momentum_warmup, default_warmup


LOCK_FILE = "train.lock"
RUN_FILE = "run.json"
CKPT_DIR = "checkpoints"
CACHE_DIR = "cache"


def new_run_id() -> str:
    return secrets.token_hex(8)


def _make_dir(path: str, what: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{what} {path} exists and is not a folder; pick another --out_dir")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {what} {path} ({e.strerror}); pick another --out_dir") from e


def _probe_writable(folder: str) -> None:
    probe = tmp_name(os.path.join(folder, ".write_probe"))
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"cannot write in {folder} ({e.strerror}); make it writable or pick another --out_dir") from e


class RunFolder:
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.ckpt_dir = os.path.join(out_dir, CKPT_DIR)
        self.log_path = os.path.join(out_dir, LOG_FILE)
        self._lock_fd: Optional[int] = None

    def open(self, primary: bool) -> None:
        """Create the folders and, on the process that writes (rank 0), take the lock, delete stale
        temporaries and check that checkpoints and the log can be written: all before any compute."""
        _make_dir(self.out_dir, "--out_dir")
        _make_dir(self.ckpt_dir, "checkpoint folder")
        if not primary:
            return
        self._lock()
        for folder in (self.out_dir, self.ckpt_dir, os.path.join(self.out_dir, CACHE_DIR)):
            remove_stale_temporaries(folder)
        for folder in (self.out_dir, self.ckpt_dir):
            _probe_writable(folder)
        if os.path.exists(self.log_path) and not os.access(self.log_path, os.W_OK):
            raise UsageError(f"cannot append to {self.log_path}; make it writable or pick another --out_dir")

    def _lock(self) -> None:
        path = os.path.join(self.out_dir, LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UsageError(f"cannot create {path} ({e.strerror}); make --out_dir writable or pick another") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode("utf-8", "replace").strip() or "holder unknown"
            os.close(fd)
            raise UsageError(f"--out_dir {self.out_dir} is in use by another training run ({holder}); "
                             f"wait for it or stop it, or pick another --out_dir") from None
        os.ftruncate(fd, 0)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock; the file stays (deleting it would race a new holder)
            self._lock_fd = None

    # ---- what the folder holds
    def checkpoint_files(self) -> list[str]:
        return sorted(os.path.basename(p) for p in glob.glob(os.path.join(self.ckpt_dir, "checkpoint_*.pt")))

    def refuse_if_taken(self) -> None:
        """--resume 0: a folder that holds a run is not silently replaced."""
        files = self.checkpoint_files()
        if files:
            shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
            raise UsageError(f"--out_dir {self.out_dir} already holds a run ({shown} in {self.ckpt_dir}); "
                             f"continue it with --resume 1, pick another --out_dir, or pass --overwrite 1 to "
                             f"delete it and start over")

    def clear(self) -> list[str]:
        """--overwrite 1: delete the earlier run's checkpoints, run.json, train.log and metrics.jsonl (the token cache
        stays: it is keyed on content). Returns what was deleted."""
        removed = [os.path.join(self.ckpt_dir, f) for f in self.checkpoint_files()]
        removed += [p for p in (os.path.join(self.out_dir, RUN_FILE), self.log_path,
                                os.path.join(self.out_dir, METRICS_FILE)) if os.path.exists(p)]
        for p in removed:
            os.remove(p)
        return removed

    # ---- run id
    def run_id(self) -> Optional[str]:
        """The run id in run.json; without it (deleted), the one this folder's own logs carry: the last
        header of metrics.jsonl, else the last "Run id:" line of train.log. None for a folder whose files
        carry no run id, or none yet. So a lost run.json never lets a resume adopt another run's step file."""
        try:
            with open(os.path.join(self.out_dir, RUN_FILE), encoding="utf-8") as f:
                rid = json.load(f).get("run_id")
        except (OSError, ValueError, AttributeError):
            rid = self._logged_run_id()
        return rid if isinstance(rid, str) and rid else None

    def _logged_run_id(self) -> Optional[str]:
        found = None
        try:
            with open(os.path.join(self.out_dir, METRICS_FILE), encoding="utf-8", errors="replace") as f:
                for line in f:
                    if '"run_id"' in line:
                        try:
                            found = json.loads(line).get("run_id") or found
                        except (ValueError, AttributeError):
                            pass
        except OSError:
            pass
        if found:
            return found
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("Run id: "):
                        found = line.split()[2]
        except (OSError, IndexError):
            pass
        return found

    def write_run_id(self, run_id: str) -> None:
        path = os.path.join(self.out_dir, RUN_FILE)
        atomic_write_text(path, json.dumps({"run_id": run_id, "host": socket.gethostname(),
                                            "written": datetime.datetime.now().isoformat(timespec="seconds")}) + "\n")


# ----------------------------------------------------------------------------- what a resume may change
MICRO_BATCHES = "grad_accum x world_size"  # micro-batches per step: N processes x accum A resumes on M x A*N/M

# Every train.py option's rule, from its declaration (smollm2/options.py), and the settings that are not options:
RULES: dict[str, str] = {
    **{o.name: o.resume for o in OPTIONS},
    MICRO_BATCHES: REFUSED,  # the data order: which windows each step sees
    "data.": REFUSED,  # the dataset's fingerprint
    "model.": FIXED,  # the architecture: its weights would not load
}


# Options that act only while another is non-zero (Option.only_with): name -> that other option.
ONLY_WITH: dict[str, str] = {o.name: o.only_with for o in OPTIONS if o.only_with}


def rule(name: str) -> str:
    if name in RULES:
        return RULES[name]
    prefix = name.split(".", 1)[0] + "."
    return RULES.get(prefix, REFUSED)  # an unclassified setting is not assumed harmless


def settings(args: dict, world_size: int, architecture: dict) -> dict:
    """The comparable settings of a run: its args, the micro-batches per step, its architecture."""
    out = {k: v for k, v in args.items() if rule(k) != IGNORED}
    if "grad_accum" in args:
        out[MICRO_BATCHES] = args["grad_accum"] * world_size
    out.update({f"model.{k}": v for k, v in architecture.items()})
    return out


def recorded_args(saved: dict) -> dict:
    """A checkpoint's args, with the value each option added after it was saved had then (Option.before, and
    the run defaults' earlier values, RUN_DEFAULTS)."""
    return {**{o.name: o.before for o in OPTIONS if o.before is not NOT_RECORDED},
            **{name: before for name, (_, before, _) in RUN_DEFAULTS.items()}, **saved}


def check_resume(saved: dict, given: dict, allow_change: bool, source: str) -> list[str]:
    """Compare what the checkpoint's run used with what this command gives. Raises UsageError listing
    each refused difference as `name: saved -> given`; returns the log lines for the accepted ones.
    A setting the checkpoint does not record is not compared (recorded_args fills the ones whose value is known)."""
    # A checkpoint that records no --optimizer was trained with AdamW (train.py's only optimizer without the flag).
    was, now = saved.get("optimizer", "adamw"), given.get("optimizer", "adamw")
    if was != now:
        raise UsageError(f"cannot resume from {source} with --optimizer {now}: the run was trained with --optimizer "
                         f"{was}, whose state does not carry over; resume with --optimizer {was}, or start a new run "
                         f"in another --out_dir")
    changed = [(k, saved[k], given[k]) for k in given if k in saved and saved[k] != given[k]
               and (k not in ONLY_WITH or saved.get(ONLY_WITH[k]) or given.get(ONLY_WITH[k]))]
    lines = {kind: [f"{k}: {a!r} -> {b!r}" for k, a, b in changed if rule(k) == kind] for kind in (FIXED, REFUSED, ALLOWED)}
    if lines[FIXED]:
        raise UsageError(f"{source} holds a different model than this command builds (saved -> given):\n  "
                         + "\n  ".join(lines[FIXED] + lines[REFUSED])
                         + "\npass the matching --model, --tie_word_embeddings and --model_impl, or another --out_dir")
    if lines[REFUSED] and not allow_change:
        raise UsageError(f"cannot resume from {source}: these settings differ from the run's and would break "
                         f"its exact continuation (saved -> given):\n  " + "\n  ".join(lines[REFUSED])
                         + "\nkeep the saved values, pick another --out_dir, or pass --allow_config_change 1 "
                           "to change them on purpose")
    return ([f"WARNING: --allow_config_change 1: {line} (this run no longer continues the saved one exactly)"
             for line in lines[REFUSED]]
            + [f"CHANGED on resume: {line}" for line in lines[ALLOWED]])


# ----------------------------------------------------------------------------- where a run starts
@dataclass
class Start:
    folder: RunFolder
    run_id: str
    ckpt_path: Optional[str] = None
    ckpt: Optional[dict] = None
    notes: list[str] = field(default_factory=list)  # lines for train.log once it is open


def prepare_run(args, rank: int, world: int, config) -> Start:
    """Lock the folder and find where this run starts: a checkpoint of the same run whose settings allow an
    exact continuation (--resume 1), or an empty folder (--resume 0; --overwrite 1 empties it first)."""
    folder = RunFolder(args.out_dir)
    try:
        folder.open(primary=rank == 0)
        if not args.resume:
            fill_run_defaults(args)
            removed = folder.clear() if args.overwrite and rank == 0 else []
            if not args.overwrite:
                folder.refuse_if_taken()
            start = Start(folder, new_run_id())
            if removed:
                start.notes.append(f"OVERWRITE: deleted the earlier run: {', '.join(map(os.path.basename, removed))}")
        else:
            try:
                found = load_latest(folder.ckpt_dir, map_location="cpu", warn=lambda m: print(m, file=sys.stderr),
                                    run_id=folder.run_id(), required=RESUME_KEYS)
            except CheckpointError as e:
                raise UsageError(f"--resume 1: {e}. Restore a good checkpoint there, or start over with "
                                 f"--overwrite 1 or another --out_dir") from e
            if found is None:
                raise UsageError(f"--resume 1 but no checkpoint in {folder.ckpt_dir}; train with --resume 0 first")
            path, ckpt = found
            fill_run_defaults(args, ckpt)
            saved = settings(recorded_args(ckpt["args"]), (ckpt.get("data") or {}).get("world_size", 1),
                             ckpt["model_config"])
            given = settings(vars(args), world, config.architecture_dict())
            notes = check_resume(saved, given, bool(args.allow_config_change), path)
            check_data_before_preparing(args, ckpt, path)
            start = Start(folder, ckpt.get("run_id") or folder.run_id() or new_run_id(), path, ckpt, notes)
        if rank == 0 and (folder.run_id() != start.run_id or not os.path.exists(os.path.join(args.out_dir, RUN_FILE))):
            folder.write_run_id(start.run_id)
        return start
    except BaseException:
        folder.close()
        raise


# Options whose default belongs to the run, not to the command: left unset, a new run gets today's default and
# a resume keeps what its run trained with, whatever the command says now (step B raises --max_steps 5000 -> 5050
# and goes on with the same warmup). name -> (today's default for these args, what a checkpoint that does not
# record the option was trained with, the saved values accepted as such).
RUN_DEFAULTS: dict[str, tuple[Callable, Any, Callable]] = {
    "warmup_steps": (lambda args: default_warmup(args.lr_decay_steps or args.max_steps, args.optimizer),
                     WARMUP_MAX_STEPS, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "muon_variant": (lambda args: DEFAULT_MUON_VARIANT if args.optimizer == "muon" else "muon", "muon",
                     lambda v: v in VARIANTS),
    "doc_mask": (lambda args: DEFAULT_DOC_MASK if args.model_impl == "ours" else 0, 0, lambda v: v in (0, 1)),
    "muon_momentum_warmup_steps": (lambda args: default_momentum_warmup(args.lr_decay_steps or args.max_steps,
                                                                        args.optimizer),
                                   0, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
}


def fill_run_defaults(args, ckpt: Optional[dict] = None) -> None:
    """Set what the user left unset among RUN_DEFAULTS: today's default for a new run, the saved run's on a resume
    (ckpt): the value its checkpoint records, else the value a run without the option trained with."""
    saved = None if ckpt is None else (ckpt.get("args") or {})
    for name, (today, before, valid) in RUN_DEFAULTS.items():
        if getattr(args, name) is None:
            value = today(args) if saved is None else saved.get(name, before)
            setattr(args, name, value if saved is None or valid(value) else before)


def check_data_before_preparing(args, ckpt: dict, path: str) -> None:
    """A resume on other data is refused before the corpus is tokenized into a new cache and before train.log
    opens: the fingerprint the data would get, from the inputs' hashes and the tokenizer alone. Accepted
    changes (--allow_config_change 1) are logged once, by build_run's comparison."""
    saved = (ckpt.get("data") or {}).get("fingerprint")
    if saved is None:
        return
    tokenizer = load_tokenizer(args.tokenizer_id, log=lambda m: None)
    given = expected_fingerprint(args.input_file, tokenizer, os.path.join(args.out_dir, CACHE_DIR), args.val_fraction)
    if given is None:
        return
    try:
        check_resume({"data.fingerprint": saved}, {"data.fingerprint": given}, bool(args.allow_config_change), path)
    except UsageError as e:
        saved_tok = (ckpt.get("args") or {}).get("tokenizer_id")
        raise UsageError(f"{e}\n(data.fingerprint hashes the corpus' content, the tokenizer and the split; this "
                         f"command's tokenizer is {tokenizer.source}, fingerprint {tokenizer.fingerprint()}; the "
                         f"saved run's --tokenizer_id was {saved_tok})") from e


# ----------------------------------------------------------------------------- the log
class Logger:
    """Lines to stdout and appended to train.log (rank 0 only). A tqdm bar only on a terminal. A stdout
    that closes (`train.py | head`) is dropped and training goes on, still writing train.log. A train.log
    write that fails (a full disk) leaves no torn line and turns the file off, recording why in `failed`:
    the loop then saves if it can and stops (exit 1), instead of dying in the writer with a traceback."""

    def __init__(self, path: str, enabled: bool, total: int, initial: int):
        self.enabled, self.stdout_open = enabled, True
        self.file = LineFile(path) if enabled else None
        self.failed: Optional[OSError] = None
        self.bar = None
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.failed is None:
            try:
                self.file.write_line(msg)
            except OSError as e:
                self.failed = e if e.filename else OSError(e.errno, e.strerror, self.file.path)
        if not self.stdout_open:
            return
        try:
            if self.bar is not None:
                self.bar.write(msg)
            else:
                print(msg, flush=True)
        except BrokenPipeError:
            # Point fd 1 at /dev/null so that nothing, not even the flush at exit, writes to the closed pipe.
            self.stdout_open = False
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
