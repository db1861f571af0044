"""metrics.jsonl: what train.py writes beside the human train.log for programs to read, and the one reader.

One JSON object per line, each with an "event" and, except "header", the global "step" it belongs to:
  start       a run from scratch (step 0)              resume      a run continuing from checkpoint "step"
  header      device, device_name, torch, world_size, params, tokens_per_step, args, switches
  train       step, lr, loss (interval mean), grad_norm, ms_per_step, tok_s, mfu (a fraction, or null)
  val         step, loss, ppl, bpb                     checkpoint  step (a file landed on disk)
  done        first_step, last_step, seconds, tok_s (overall), peak_mem_bytes (or null)
  stop        step, signal: a SIGINT/SIGTERM/SIGHUP stopped the run there, after saving it
  task        step, task, acc, acc_norm (not for winogrande), items: train.py --task_eval
  wall        step, then the loop's WallClock summary (smollm2/loop.py: seconds per part of the loop)
A resumed run appends to the same file. For a folder with train.log but no metrics.jsonl,
read_events() parses the log into the same records (log_events), so both have one reader, and
summarize() follows the lineage that ends the file for every consumer (update_readme.py, train_ablation.py).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from smollm2.common import SmolError
from smollm2.io import LineFile, set_aside_torn_line

LOG_FILE = "train.log"  # the human log, in --out_dir
METRICS_FILE = "metrics.jsonl"  # beside it: the same numbers as records


class MetricsError(SmolError):
    """A metrics.jsonl line that is not a JSON object with an "event"."""

    code = 2


# ----------------------------------------------------------------------------- writing (train.py, rank 0)
class MetricsWriter:
    """Appends one JSON object per event to <out_dir>/metrics.jsonl (one unbuffered write per line: a crash
    loses no logged step, and a failed write leaves no torn line, smollm2.io.LineFile) and, when given a
    TensorBoard SummaryWriter, the scalars of train and val events. A last line cut short by an earlier
    run is set aside before anything is appended (`note` says so). A write that fails (a full disk) turns
    the writer off and records why in `failed`: the training loop reads it and stops cleanly."""

    def __init__(self, path: Optional[str], tensorboard=None):
        self.note = set_aside_torn_line(path) if path else None
        self.file = LineFile(path) if path else None
        self.tensorboard = tensorboard
        self.failed: Optional[OSError] = None

    def __call__(self, event: str, **fields) -> None:
        if self.file is None or self.failed is not None:
            return
        try:
            self.file.write_line(json.dumps({"event": event, **fields}, allow_nan=False, default=str))
            if self.tensorboard is not None and event in ("train", "val", "task"):
                for name in ("loss", "bpb", "lr", "grad_norm", "tok_s", "mfu", "acc", "acc_norm"):
                    if fields.get(name) is not None:
                        self.tensorboard.add_scalar(f"{event}/{name}", fields[name], fields["step"])
                self.tensorboard.flush()
        except OSError as e:
            self.failed = e if e.filename else OSError(e.errno, e.strerror, self.file.path)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            try:
                self.tensorboard.close()
            except OSError:
                pass


def finite_or_none(v: float) -> Optional[float]:
    """JSON has no NaN or inf: a non-finite number (the step that stops a run) is written as null."""
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- reading train.log
# "step    50/5000 | lr 7.463e-05 | loss 9.8108 | ..." and "step   250/5000 | val loss 5.1234 | ...".
# Fields are "key value" pairs split on "|", so fields added to train.py later are simply carried.
STEP_RE = re.compile(r"^\s*step\s+(\d+)(?:\s*/\s*(\d+))?\s*\|(.*)$")
FIELD_RE = re.compile(r"^(.*?)\s+(\S+)$")
RESUME_RE = re.compile(r"^\s*RESUME\b.*?(?:global_step|step)\s*[=:]?\s*(\d+)", re.IGNORECASE)
SCRATCH_RE = re.compile(r"^\s*Starting from scratch", re.IGNORECASE)
CHECKPOINT_RE = re.compile(r"^\s*CHECKPOINT\b(?:.*?checkpoint_step_(\d+))?", re.IGNORECASE)
DEVICE_RE = re.compile(r"^Device: (\S+) \((.*?)\)(?:.*?torch (\S+))?(?:.*?world size (\d+))?")
PARAMS_RE = re.compile(r"^Model params: ([\d,]+)")
DONE_RE = re.compile(r"^DONE: steps (\d+)\.\.(\d+) in (\S+)s \((\S+) tok/s[^)]*\)(?:.*?peak mem (\S+) GB)?")
# "WALL: {...}" after each run's DONE (or STOP) line: where that run's wall time went, as JSON.
WALL_RE = re.compile(r"^WALL: (\{.*\})\s*$")
LOG_MARKS = (STEP_RE, RESUME_RE, SCRATCH_RE, CHECKPOINT_RE)  # a text with none of them is not a train.py log


def number(s) -> Optional[float]:
    """Float from a log field or CSV cell ('1.23%', '12,345', ' 3.2 '); None if empty or not finite."""
    if s is None:
        return None
    s = str(s).strip().rstrip("%").replace(",", "").replace("_", "")
    if not s:
        return None
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def parse_fields(rest: str) -> dict[str, str]:
    out = {}
    for part in rest.split("|"):
        m = FIELD_RE.match(part.strip())
        if m:
            out[" ".join(m.group(1).lower().split())] = m.group(2)
    return out


def step_event(step: int, fields: dict[str, str]) -> Optional[dict]:
    if "val loss" in fields:
        return {"event": "val", "step": step, "loss": number(fields["val loss"]), "ppl": number(fields.get("val ppl")),
                "bpb": number(fields.get("val bpb"))}
    if "loss" not in fields:
        return None
    mfu = number(fields.get("mfu"))
    return {"event": "train", "step": step, "lr": number(fields.get("lr")), "loss": number(fields["loss"]),
            "grad_norm": number(fields.get("grad_norm")), "ms_per_step": number(fields.get("ms/step")),
            "tok_s": number(fields.get("tok/s")), "mfu": None if mfu is None else mfu / 100}


def log_events(text: str) -> list[dict]:
    """train.log's lines as metrics.jsonl records (header, sample and free text lines are skipped)."""
    events, step = [], 0
    for line in text.splitlines():
        if SCRATCH_RE.match(line):
            events.append({"event": "start", "step": 0})
        elif m := RESUME_RE.match(line):
            events.append({"event": "resume", "step": int(m[1])})
        elif m := CHECKPOINT_RE.match(line):
            events.append({"event": "checkpoint", "step": int(m[1]) if m[1] else step})
        elif m := DEVICE_RE.match(line):
            events.append({"event": "header", "device": m[1], "device_name": m[2], "torch": m[3],
                           "world_size": int(m[4]) if m[4] else None})
        elif m := PARAMS_RE.match(line):
            events.append({"event": "header", "params": int(m[1].replace(",", ""))})
        elif m := DONE_RE.match(line):
            events.append({"event": "done", "step": int(m[2]), "first_step": int(m[1]), "last_step": int(m[2]),
                           "seconds": float(m[3]), "tok_s": float(m[4]),
                           "peak_mem_bytes": int(float(m[5]) * 1e9) if m[5] else None})
        elif m := WALL_RE.match(line):
            try:
                wall = json.loads(m[1])
            except ValueError as e:
                raise MetricsError(f"a WALL line of the train log is not JSON ({e})") from e
            events.append({"event": "wall", "step": step, **wall})
        elif (m := STEP_RE.match(line)) and (e := step_event(int(m[1]), parse_fields(m[3]))):
            step = e["step"]
            events.append(e)
    return events


def event_record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except ValueError as err:
        raise MetricsError(f"{where} is not JSON ({err})") from err
    if not isinstance(record, dict) or "event" not in record:
        raise MetricsError(f"{where} is not an event record")
    return record


def jsonl_events(text: str, source: str) -> list[dict]:
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # a line cut short by a killed process: every complete line before it stands
    return [event_record(line, f"{source} line {i}") for i, line in enumerate(lines, 1) if line.strip()]


def read_events(log_path: str, log_text: Optional[str] = None) -> list[dict]:
    """The run's records: the metrics.jsonl that train.py wrote beside this train.log when it is there, else
    the log parsed (log_text, or the file). A log under another name (a copy) is always parsed itself.
    A missing log and no metrics file: no records."""
    jsonl = os.path.join(os.path.dirname(os.path.abspath(log_path)), METRICS_FILE)
    if os.path.basename(log_path) == LOG_FILE and os.path.isfile(jsonl):
        with open(jsonl, encoding="utf-8") as f:
            return jsonl_events(f.read(), jsonl)
    if log_text is None:
        if not os.path.isfile(log_path):
            return []
        with open(log_path, encoding="utf-8", errors="replace") as f:
            log_text = f.read()
    return log_events(log_text)


# ----------------------------------------------------------------------------- what the records say
@dataclass
class RunSummary:
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) of the current lineage
    val: list[tuple[int, float]] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)  # global_step each resume started from
    checkpoints: int = 0  # checkpoint events since the lineage began
    runs: int = 0  # scratch starts + resumes seen in the whole file
    walls: list[dict] = field(default_factory=list)  # WALL records of the lineage, one per run
    done: list[dict] = field(default_factory=list)  # every DONE record of the file
    header: dict = field(default_factory=dict)  # the first header fields of the file (device, params ...)
    speeds: list[float] = field(default_factory=list)  # tok/s of every train record of the file


def summarize(events: list[dict]) -> RunSummary:
    """Follow the lineage that ends at the last record.

    Several runs may be appended to one file. A "start" begins a new lineage; "resume" from N drops points
    after N (that work was superseded by the checkpoint at N); a step lower than one already seen, without
    either, is an unannounced restart and drops the points from that step on. What is left is the loss
    history of the final model.
    """
    s = RunSummary()

    def cut(limit: int, inclusive: bool) -> None:
        keep = (lambda st: st < limit) if inclusive else (lambda st: st <= limit)
        s.train[:] = [p for p in s.train if keep(p[0])]
        s.val[:] = [p for p in s.val if keep(p[0])]
        s.resumes[:] = [r for r in s.resumes if keep(r)]

    for e in events:
        kind = e.get("event")
        if kind == "start":
            s.runs += 1
            s.train, s.val, s.resumes, s.checkpoints, s.walls = [], [], [], 0, []
        elif kind == "resume":
            s.runs += 1
            cut(int(e["step"]), inclusive=False)
            s.resumes.append(int(e["step"]))
        elif kind == "checkpoint":
            s.checkpoints += 1
        elif kind == "header":
            s.header.update({k: v for k, v in e.items() if k != "event" and k not in s.header and v is not None})
        elif kind == "done":
            s.done.append(e)
        elif kind == "wall":
            s.walls.append({k: v for k, v in e.items() if k not in ("event", "step")})
        elif kind in ("train", "val") and e.get("loss") is not None:
            if kind == "train" and e.get("tok_s"):
                s.speeds.append(e["tok_s"])
            series, step = (s.train if kind == "train" else s.val), int(e["step"])
            if series and step <= series[-1][0]:
                cut(step, inclusive=True)
            series.append((step, float(e["loss"])))
    return s


def parse_log(text: str) -> RunSummary:
    return summarize(log_events(text))
