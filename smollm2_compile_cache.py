"""torch.compile's work kept for the next process, so a resume and the next run do not compile again.

Two layers, both PyTorch's own:
  - the machine's caches: inductor's FX-graph cache, the AOTAutograd cache and the Triton kernels, on by
    default under $TORCHINDUCTOR_CACHE_DIR (default /tmp/torchinductor_$USER). A second run on the same
    machine hits them: dynamo still traces the model, but nothing is lowered or compiled again.
  - the portable artifacts ("mega-cache"): after the first step torch.compiler.save_cache_artifacts()
    serialises what this process compiled or loaded, and train.py writes it to <out_dir>/cache/
    compile_artifacts.bin; before the first compile load_cache_artifacts() puts that file's entries into
    the machine's caches. So a resume on another machine, or after /tmp was wiped, finds them too.
The artifacts carry their own keys (graph, torch version, device), so a stale or foreign file only
misses; a file that does not load is reported in one line and ignored, never a reason to stop a run.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch

from smollm2_io import atomic_write_bytes

ARTIFACTS = "compile_artifacts.bin"


def _count(info) -> int:
    return sum(len(v) for v in info.artifacts.values()) if info is not None else 0


def load_artifacts(path: str, log: Callable[[str], None]) -> None:
    if not os.path.isfile(path):
        return
    t0 = time.perf_counter()
    try:
        with open(path, "rb") as f:
            info = torch.compiler.load_cache_artifacts(f.read())
    except Exception as e:  # a truncated or foreign file: compile as if it were not there
        log(f"Compile cache: ignored {path} ({type(e).__name__}: {str(e)[:120]})")
        return
    log(f"Compile cache: loaded {_count(info)} artifacts from {path} in {time.perf_counter() - t0:.2f}s")


def save_artifacts(path: str, log: Callable[[str], None]) -> None:
    """Write what this process compiled (or loaded) so far; unchanged bytes are not rewritten."""
    t0 = time.perf_counter()
    saved = torch.compiler.save_cache_artifacts()
    if saved is None or not saved[0]:
        return
    data, info = saved
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except OSError:
        pass
    try:
        atomic_write_bytes(path, data)
    except OSError as e:  # a full disk costs the next run a compile, not this run its progress
        log(f"Compile cache: could not write {path} ({e.strerror or e})")
        return
    log(f"Compile cache: saved {_count(info)} artifacts ({len(data) / 1e6:.1f} MB) to {path} "
        f"in {time.perf_counter() - t0:.2f}s")
