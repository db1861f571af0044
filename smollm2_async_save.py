"""Checkpoints written while training goes on: the loop copies the state into host memory and returns;
the one writer (smollm2_checkpoint.save_checkpoint: temporary name, fsync, rename) runs in a thread.

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

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch


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
