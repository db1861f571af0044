"""One-file, atomic checkpoints holding everything an exact resume needs.

A checkpoint is a dict saved with torch.save:
  format_version, global_step, model (state dict, no compile/DDP prefixes), optimizer,
  scheduler (the step the lr schedule is at), rng (python, numpy, torch, cuda), data (position),
  model_config (SmolLM2Config.to_dict()), args (the training options), plus free-form extras.
It is written to a temporary name in the same folder, flushed, fsynced and renamed into place, so a
crash mid-save leaves the previous file intact. Loading uses weights_only=True (no pickled code).
"""

from __future__ import annotations

import glob
import os
import random
import re
from typing import Any, Callable, Optional

import numpy as np
import torch

FORMAT_VERSION = 1
LATEST = "checkpoint_latest.pt"
STEP_RE = re.compile(r"checkpoint_step_(\d+)\.pt$")
_PREFIXES = ("_orig_mod.", "module.")


class CheckpointError(RuntimeError):
    pass


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


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    state = {"format_version": FORMAT_VERSION, **state}
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
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


def load_latest(ckpt_dir: str, map_location: Any = "cpu",
                warn: Callable[[str], None] = print) -> Optional[tuple[str, dict[str, Any]]]:
    """checkpoint_latest.pt, or, if it is missing or corrupt, the newest readable step checkpoint."""
    latest = os.path.join(ckpt_dir, LATEST)
    candidates = ([latest] if os.path.exists(latest) else []) + [p for _, p in step_checkpoints(ckpt_dir)]
    for path in candidates:
        try:
            ckpt = load_checkpoint(path, map_location)
        except CheckpointError as e:
            warn(f"WARNING: {e}; trying an older checkpoint")
            continue
        if path != latest and os.path.exists(latest):
            warn(f"WARNING: falling back to {os.path.basename(path)} (global_step={ckpt.get('global_step')})")
        return path, ckpt
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
    tmp = f"{latest}.tmp.{os.getpid()}"
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil
        shutil.copyfile(src, tmp)
    os.replace(tmp, latest)
