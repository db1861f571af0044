"""One-file, atomic checkpoints holding everything an exact resume needs.

A checkpoint is a dict saved with torch.save:
  format_version, global_step, model (state dict, no compile/DDP prefixes), optimizer,
  scheduler (the step the lr schedule is at), rng (python, numpy, torch, cuda), data (position),
  model_config (SmolLM2Config.to_dict()), args (the training options), plus free-form extras.
  metrics (train.py, for the model card: last logged train and held-out loss with their steps, device,
  data description, tokens per step); absent in older files.
  run_id (the run that wrote it: a resume never falls back to another run's file).
It is written through smollm2_io.atomic_open (a temporary <name>.tmp.<pid> in the same folder, fsynced,
renamed into place), so a crash mid-save leaves the previous file intact; the temporary of a killed save
is removed by smollm2_io.remove_stale_temporaries at the next start. Loading uses weights_only=True (no pickled code).
"""

from __future__ import annotations

import glob
import os
import random
import re
import shutil
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.serialization import config as serialization_config

from smollm2_config import SmolLM2Config
from smollm2_hub import looks_like_path
from smollm2_io import atomic_open, tmp_name
from smollm2_model import SmolLM2ForCausalLM
from smollm2_tokenizer import DEFAULT_TOKENIZER_ID

FORMAT_VERSION = 1
LATEST = "checkpoint_latest.pt"
STEP_RE = re.compile(r"checkpoint_step_(\d+)\.pt$")
# What train.py needs from a checkpoint to resume; a file lacking any is passed over like a corrupt one.
RESUME_KEYS = ("global_step", "model", "optimizer", "rng", "model_config", "args")
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
    """Why a readable checkpoint cannot be resumed from, or None. A file without a run id predates run
    ids (legacy) and is accepted."""
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
