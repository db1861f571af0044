"""One-file, atomic checkpoints holding everything an exact resume needs.

A checkpoint is a dict saved with torch.save:
  format_version, global_step, model (state dict, no compile/DDP prefixes), optimizer,
  scheduler (the step the lr schedule is at), rng (python, numpy, torch, cuda), data (position),
  model_config (SmolLM2Config.to_dict()), args (the training options), plus free-form extras.
  metrics (train.py, for the model card: last logged train and held-out loss with their steps, device,
  data description, tokens per step); absent in older files.
  run_id (the run that wrote it: a resume never falls back to another run's file).
It is written through smollm2.io.atomic_open (a temporary <name>.tmp.<pid> in the same folder, fsynced,
renamed into place), so a crash mid-save leaves the previous file intact; the temporary of a killed save
is removed by smollm2.io.remove_stale_temporaries at the next start. Loading uses weights_only=True (no pickled code).

Checkpoints written while training goes on: the loop copies the state into host memory and returns;
the one writer (smollm2.checkpoint.save_checkpoint: temporary name, fsync, rename) runs in a thread.

At a save the loop pays for the copy alone (for the 135M model with AdamW: 1.6 GB device -> pinned host,
tens of ms on an H100), not for pickling and fsyncing the file (seconds). The copies are queued on the
current CUDA stream, so the steps queued after them cannot change the weights before they are read; the
writer thread waits for an event behind them before it serialises. The host buffers (pinned on CUDA) are
allocated once, in a thread after the first step (reserve) or else at the first save, and reused, which is
why at most one write is in flight: the next save first waits for the previous one. A failed write is
reported when the loop collects it (the next save, a log line, the end). SIGKILL during a background
write leaves what it leaves during a synchronous one: a <name>.tmp.<pid>, and the previous latest.

torchtitan's async checkpointing (a staging copy to pinned memory, then a background save; one in flight)
is the model for this; here the writer is the repo's own synchronous one, unchanged.
"""

from __future__ import annotations

import glob
import os
import random
import re
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.serialization import config as serialization_config

from smollm2_config import SmolLM2Config


from smollm2.common import SmolError
from smollm2.io import atomic_open, tmp_name
from smollm2.released import looks_like_path
from smollm2_model import SmolLM2ForCausalLM
from smollm2.tokenizer import DEFAULT_TOKENIZER_ID

FORMAT_VERSION = 1
LATEST = "checkpoint_latest.pt"
STEP_RE = re.compile(r"checkpoint_step_(\d+)\.pt$")
# What train.py needs from a checkpoint to resume; a file lacking any is passed over like a corrupt one.
RESUME_KEYS = ("global_step", "model", "optimizer", "rng", "model_config", "args")
_PREFIXES = ("_orig_mod.", "module.")


class CheckpointError(SmolError, RuntimeError):
    code = 2


def step_name(step: int) -> str:
    return f"checkpoint_step_{step}.pt"


def clean_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add to parameter names."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
            k = k.replace("._orig_mod.", ".")
        out[k] = v
    return out


def nonfinite_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf (one host sync for all of them)."""
    names = [k for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point()]
    if not names:
        return []
    ok = torch.stack([torch.isfinite(tensors[k]).all().to("cpu") for k in names]).tolist()
    return [k for k, good in zip(names, ok) if not good]


class _WriteRecorder:
    """A file wrapper that keeps the OSError of a failed write: torch.save turns it into an opaque
    RuntimeError ("unexpected pos"), and the caller should hear "File too large" or "No space left"."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {"format_version": FORMAT_VERSION, **state}
    # No CRC32 per record: torch.load never checks it, and over 1.6 GB it was about half of the write's time
    # (the background write must finish within --save_every steps of ~8 ms). A torn file still fails to load.
    with atomic_open(path) as f, serialization_config.patch({"save.compute_crc32": False}):
        writer = _WriteRecorder(f)
        try:
            torch.save(state, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict[str, Any]:
    if os.path.isdir(path):
        inside = os.path.join(path, "checkpoints", LATEST) if os.path.isdir(os.path.join(path, "checkpoints")) \
            else os.path.join(path, LATEST)
        hint = f"; did you mean {inside}?" if os.path.isfile(inside) else "; pass a .pt file written by training"
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file{hint}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "weights_only" in str(e) or "Weights only" in first:
            # torch's own advice (load with weights_only=False) would run whatever the file holds: not ours
            raise CheckpointError(f"{path} is not a readable checkpoint (not a checkpoint: random bytes, another "
                                  f"format or a damaged file)") from e
        raise CheckpointError(f"{path} is not a readable checkpoint ({first[:160]})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "format_version" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint written by this repo (no model/format_version)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {ckpt['format_version']}, newer than this code "
                              f"({FORMAT_VERSION}); update the repo")
    ckpt["model"] = clean_state_dict(ckpt["model"])
    return ckpt


def step_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint_step_N.pt, newest first."""
    found = []
    for p in glob.glob(os.path.join(ckpt_dir, "checkpoint_step_*.pt")):
        m = STEP_RE.search(os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def resume_problem(ckpt: dict[str, Any], required: tuple[str, ...], run_id: Optional[str]) -> Optional[str]:
    """Why a readable checkpoint cannot be resumed from, or None. A file without a run id has nothing to
    compare and is accepted."""
    missing = [k for k in required if k not in ckpt]
    if missing:
        return f"lacks {', '.join(missing)}"
    if run_id and ckpt.get("run_id") and ckpt["run_id"] != run_id:
        return f"written by another run (run id {ckpt['run_id']}, this folder's run is {run_id})"
    bad = nonfinite_names(ckpt["model"])
    if bad:
        return f"holds non-finite weights ({bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''})"
    return None


def load_latest(ckpt_dir: str, map_location: Any = "cpu", warn: Callable[[str], None] = print,
                run_id: Optional[str] = None,
                required: tuple[str, ...] = ()) -> Optional[tuple[str, dict[str, Any]]]:
    """checkpoint_latest.pt, or, if it is missing, corrupt, incomplete (lacks a `required` key) or
    non-finite, the newest step checkpoint that is none of these and belongs to the same run: `run_id`,
    else the run id of the latest when that at least loads. None if the folder holds no checkpoint;
    CheckpointError listing every file and why it was rejected if none is usable."""
    latest = os.path.join(ckpt_dir, LATEST)
    candidates = ([latest] if os.path.exists(latest) else []) + [p for _, p in step_checkpoints(ckpt_dir)]
    rejected = []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path, map_location)
        except CheckpointError as e:
            problem = str(e)
        else:
            if path == latest and run_id is None:
                run_id = ckpt.get("run_id")
            problem = resume_problem(ckpt, required, run_id)
            if problem is None:
                if rejected:
                    warn(f"WARNING: falling back to {os.path.basename(path)} (global_step={ckpt.get('global_step')})")
                return path, ckpt
            problem = f"{path} {problem}"
        warn(f"WARNING: {problem}; trying an older checkpoint")
        rejected.append(problem)
    if rejected:
        raise CheckpointError(f"no usable checkpoint in {ckpt_dir}: {'; '.join(rejected)}")
    return None


def prune_step_checkpoints(ckpt_dir: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` step checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return []
    removed = []
    for _, p in step_checkpoints(ckpt_dir)[keep:]:
        os.remove(p)
        removed.append(p)
    return removed


# ----------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def link_latest(src: str, latest: str) -> None:
    """Point checkpoint_latest.pt at src atomically: a hard link (no second 1.6 GB write for the 135M
    model with its optimizer), or a copy where the filesystem has no hard links."""
    tmp = tmp_name(latest)
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, latest)


# ----------------------------------------------------------------------------- back to a model
def model_from_checkpoint(path: str, map_location="cpu") -> tuple[SmolLM2ForCausalLM, dict]:
    """Rebuild the model a checkpoint was trained with. Returns (model in eval mode, checkpoint)."""
    ckpt = load_checkpoint(path, map_location=map_location)
    if not isinstance(ckpt.get("model_config"), dict):
        raise CheckpointError(f"{path} carries no model_config; cannot tell which architecture it holds")
    try:
        config = SmolLM2Config.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an invalid model_config ({e})") from e
    sd = dict(ckpt["model"])
    bad = nonfinite_names(sd)
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights ({', '.join(bad[:3])}"
                              f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}): the run diverged before "
                              f"this save; use an earlier checkpoint")
    embed, head = sd.get("model.embed_tokens.weight"), sd.get("lm_head.weight")
    if config.tie_word_embeddings and embed is not None:
        # A tied model's state dict names the shared matrix twice; a file that stored it once is fine too,
        # but two different matrices under a tied config would silently lose one of them.
        if head is None:
            sd["lm_head.weight"] = embed
        elif head.shape != embed.shape or not torch.equal(head, embed):
            raise CheckpointError(f"{path}: config says tie_word_embeddings but lm_head differs from embed_tokens")
    model = SmolLM2ForCausalLM(config, init=False)  # every weight comes from the file
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit its model_config ({str(e).splitlines()[0]})") from e
    if config.tie_word_embeddings and not model.tie_holds():
        raise CheckpointError(f"{path}: the embedding/lm_head tie broke while loading")
    return model.eval(), ckpt


def checkpoint_tokenizer_id(ckpt: dict) -> str:
    """The tokenizer the run trained with (train.py stores its args), if it still resolves here."""
    args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    tok_id = args.get("tokenizer_id")
    if not isinstance(tok_id, str) or not tok_id:
        return DEFAULT_TOKENIZER_ID
    # A path from another machine is not an error: every SmolLM2 tokenizer source gives the same ids.
    return tok_id if os.path.exists(tok_id) or not looks_like_path(tok_id) else DEFAULT_TOKENIZER_ID


# ----------------------------------------------------------------------------- background writes
class HostSnapshot:
    """Copies a nested state (dicts, lists, tuples of tensors and plain values) into host buffers kept
    between calls, keyed by their place in the state. A tensor reached twice (the tied embedding and
    lm_head) is copied once and stays one tensor in the copy, as torch.save would keep it."""

    def __init__(self, pin: bool):
        self.pin = pin
        self.buffers: dict[tuple, torch.Tensor] = {}

    def reserve(self, state: Any) -> None:
        """Allocate the buffers a copy of `state` needs, without copying (pinned allocation is slow: ~1 s for
        1.6 GB, which the first save would otherwise spend in the loop)."""
        self.copy(state, fill=False)

    def copy(self, state: Any, fill: bool = True) -> Any:
        seen: dict[tuple, torch.Tensor] = {}

        def walk(obj: Any, path: tuple) -> Any:
            if torch.is_tensor(obj):
                key = (obj.device, obj.untyped_storage().data_ptr(), obj.storage_offset(), tuple(obj.shape),
                       obj.stride(), obj.dtype)
                if key not in seen:
                    buf = self.buffers.get(path)
                    if buf is None or buf.shape != obj.shape or buf.dtype != obj.dtype:
                        buf = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=self.pin)
                        self.buffers[path] = buf
                    if fill:
                        buf.copy_(obj.detach(), non_blocking=self.pin)
                    seen[key] = buf
                return seen[key]
            if isinstance(obj, dict):
                return {k: walk(v, path + (k,)) for k, v in obj.items()}
            if isinstance(obj, list):
                return [walk(v, path + (i,)) for i, v in enumerate(obj)]
            if type(obj) is tuple:
                return tuple(walk(v, path + (i,)) for i, v in enumerate(obj))
            return obj  # ints, floats, strings, None: immutable

        return walk(state, ())


@dataclass
class Written:
    tag: Any  # what the caller passed to submit (train.py: the step and why it saved)
    seconds: float  # the write itself: serialise, fsync, rename (in the thread when in the background)
    error: Optional[BaseException] = None


class CheckpointWriter:
    """submit(job, state, tag): snapshot `state`, then job(snapshot) in a thread (background=True) or
    here. wait() returns the finished write (or None); poll() the same without blocking."""

    def __init__(self, background: bool, pin: bool):
        self.background = background
        self.snapshot = HostSnapshot(pin)
        self._thread: Optional[threading.Thread] = None
        self._done: Optional[Written] = None

    def reserve(self, state: Any) -> None:
        """Allocate the host buffers for `state` in a thread while training goes on (the allocator releases
        the GIL); the next submit waits for it. Tensors only: nothing is read from them."""
        self.wait()
        self._thread = threading.Thread(target=self.snapshot.reserve, args=(state,), name="checkpoint-reserve")
        self._thread.start()

    def submit(self, job: Callable[[Any], None], state: Any, tag: Any) -> Optional[Written]:
        previous = self.wait()  # the buffers are about to be overwritten
        host = self.snapshot.copy(state)
        ready = None
        if self.snapshot.pin and torch.cuda.is_available():
            ready = torch.cuda.Event()
            ready.record()  # behind the copies on the current stream

        def run() -> None:
            t0 = time.perf_counter()
            try:
                if ready is not None:
                    ready.synchronize()
                job(host)
                self._done = Written(tag, time.perf_counter() - t0)
            except BaseException as e:  # reported to the loop by wait()/poll(), not lost in the thread
                self._done = Written(tag, time.perf_counter() - t0, e)

        if self.background:
            # Not a daemon: should the main thread leave without wait(), the interpreter still joins it.
            self._thread = threading.Thread(target=run, name="checkpoint-writer")
            self._thread.start()
        else:
            run()
        return previous

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> Optional[Written]:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        done, self._done = self._done, None
        return done

    def poll(self) -> Optional[Written]:
        return None if self.busy() else self.wait()
