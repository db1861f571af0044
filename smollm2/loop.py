"""What train.py's loop keeps beside the step: where the wall time goes (WallClock, the log's WALL line), the
steps since the last log line (Interval), a stop asked for by a signal (StopFlag) and the saves (Checkpoints).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict

import torch

from smollm2 import parallel
from smollm2.checkpoint import (LATEST, CheckpointWriter, link_latest, nonfinite_names, prune_step_checkpoints,
                                rng_state, save_checkpoint, step_name)
from smollm2.common import RunStopped
from smollm2.io import write_failure_advice
from smollm2.training import optimizer_state_for_checkpoint


class WallClock:
    """Where the command's wall time goes, for the WALL line of the log summary. Before the loop,
    setup_part(name) books the start-up by part (imports: from the process's start); in the loop lap(name)
    books the time since the previous lap to `name`, after waiting for the device: steps queued before a log
    line, a validation or a save are booked to the steps, not to whatever synchronises next. A save books
    the loop's stall (the copy to host memory); the wait for the last write before exit is final_write."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.longest: dict[str, float] = {}
        import psutil  # when the process started: the interpreter, imports and flag checks come before this
        self.setup = {"imports": time.time() - psutil.Process().create_time()}
        self.t0 = self.t = time.perf_counter()

    def setup_part(self, name: str) -> None:
        """Before the loop: book the time since the previous mark to a part of the start-up."""
        now = time.perf_counter()
        self.setup[name] = self.setup.get(name, 0.0) + now - self.t
        self.t = now

    def start_loop(self) -> None:
        self.setup_part("other")
        self.t0 = self.t

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.counts[name] = self.counts.get(name, 0) + 1
        self.longest[name] = max(self.longest.get(name, 0.0), seconds)

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.add(name, now - self.t)
        self.t = now

    def summary(self, steps: int, async_save: bool) -> dict:
        """The WALL line: seconds per part of the loop (they add up to loop_s) and, apart, the writes that
        ran in the background thread (save_write_s, overlapping the steps when async_save)."""
        s, n = self.seconds, self.counts
        loop = time.perf_counter() - self.t0
        parts = {"compile_s": s.get("compile", 0.0), "steps_s": s.get("steps", 0.0),
                 "save_stall_s": s.get("save", 0.0), "final_write_s": s.get("final_write", 0.0),
                 "val_s": s.get("val", 0.0), "sample_s": s.get("sample", 0.0)}
        parts["other_s"] = loop - sum(parts.values())
        return {"startup_s": sum(self.setup.values()), "startup_parts": self.setup, "loop_s": loop, **parts,
                "steps": steps,
                "saves": n.get("save_write", 0), "save_stall_max_s": self.longest.get("save", 0.0),
                "save_write_s": s.get("save_write", 0.0), "async_save": async_save,
                "vals": n.get("val", 0), "samples": n.get("sample", 0)}


class Interval:
    """The steps since the last log line: their summed loss on the device (no host sync per step) and time."""

    def __init__(self, device: torch.device):
        self.loss, self.steps, self.t0 = torch.zeros((), device=device), 0, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss
        self.steps += 1

    def read(self) -> tuple[float, int, float]:
        """(mean loss over every rank, steps, seconds so far)."""
        return float(parallel.mean_across_ranks(self.loss / self.steps)), self.steps, time.perf_counter() - self.t0

    def restart(self) -> None:
        self.loss.zero_()
        self.steps, self.t0 = 0, time.perf_counter()


class StopFlag:
    """SIGINT/SIGTERM/SIGHUP (a dropped ssh session): finish the current step, save, exit 0. A second
    SIGINT aborts at once."""

    def __init__(self):
        self.requested = None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name


# ----------------------------------------------------------------------------- the saves
class Checkpoints:
    """Saves from the loop: the finiteness check before each, one background write in flight (--async_save 1),
    the outcome of each write logged when it lands, and a failed one stopping the run (exit 1) with
    checkpoint_latest.pt as it was (`kept` says which step that is)."""

    def __init__(self, run, clock: WallClock, metrics: dict):
        # run: train.py's Run; read here are its args, env, start, log, events, model, optimizer, step_fn, config,
        # data and switches
        self.run, self.clock, self.metrics = run, clock, metrics
        self.dir = run.start.folder.ckpt_dir
        self.writer = CheckpointWriter(background=bool(run.args.async_save), pin=run.env.device.type == "cuda")
        self.kept = f"step {run.start_step}" if run.start.ckpt is not None else "none saved yet"
        self.cause = ""  # why the run is stopping, when a failed write elsewhere stopped it: leads the error

    def stop_run(self, msg: str):
        self.run.log(f"ERROR: {msg}")
        raise RunStopped(msg, 1)

    def collect(self, done) -> None:
        """A finished write: log it, or stop the run (exit 1) if it failed; the latest is then as it was."""
        if done is None:
            return
        step, reason = done.tag
        self.clock.add("save_write", done.seconds)
        if done.error is not None:
            if isinstance(done.error, OSError):  # disk full, a file-size limit, a folder made read-only
                self.stop_run(f"{self.cause}could not write {os.path.join(self.dir, step_name(step))} "
                              f"({done.error.strerror or done.error}); {LATEST} stays as it was ({self.kept}): "
                              f"{write_failure_advice(done.error, self.dir)}, then --resume 1")
            raise done.error
        self.kept = f"step {step}"
        self.run.log(f"CHECKPOINT: saved {step_name(step)} and {LATEST}{reason}")
        self.run.events("checkpoint", step=step, file=step_name(step))

    def ensure_finite(self, step: int) -> None:
        # One host sync, at a log, sample, validation or save: the device flag covers every step so far.
        if parallel.any_rank(not self.run.step_fn.all_finite()):
            self.collect(self.writer.wait())  # a write in flight holds an earlier, finite step: let it land first
            self.stop_run(f"non-finite loss or gradient norm by step {step}; nothing after it is saved and "
                          f"{LATEST} stays as it was ({self.kept}): lower --max_lr or check the data, then --resume 1")

    def _write(self, host: dict) -> None:
        # The one writer, on the snapshot in host memory: in the background thread (--async_save 1) or here.
        path = os.path.join(self.dir, step_name(host["global_step"]))
        save_checkpoint(path, host)
        link_latest(path, os.path.join(self.dir, LATEST))
        prune_step_checkpoints(self.dir, self.run.args.keep_checkpoints)

    def weights(self) -> dict:
        """The checkpoint's tensors that matter for size: the model's and the optimizer's state."""
        run = self.run
        return dict(model=parallel.full_state_dict(run.model),
                    optimizer=parallel.full_optimizer_state(run.model, run.optimizer, optimizer_state_for_checkpoint))

    def reserve(self) -> None:
        """After the first step (the optimizer state exists): the host buffers of the saves, allocated in the
        background, so the first save stalls the loop no longer than the others."""
        if self.run.env.rank == 0 and self.writer.snapshot.pin and self.run.args.save_every and not self.run.args.fsdp:
            self.writer.reserve(self.weights())

    def save(self, step: int, reason: str = "") -> None:
        run, args = self.run, self.run.args
        self.ensure_finite(step)
        # The lr needs no section of its own: it is lr_at(step, args), both saved.
        state = dict(global_step=step, run_id=run.start.run_id, **self.weights(), rng=rng_state(),
                     data={"next_step": step + 1, "seed": args.seed, "seq_len": args.seq_len,
                           "batch_size": args.batch_size, "grad_accum": args.grad_accum,
                           "world_size": run.env.world_size, "train_tokens": len(run.data.train),
                           "sampler": args.sampler, "fingerprint": run.data.fingerprint},
                     model_config=run.config.to_dict(), args=vars(args), switches=asdict(run.switches),
                     metrics=dict(self.metrics))
        bad = nonfinite_names(state["model"]) if run.env.rank == 0 else []
        if parallel.any_rank(bool(bad)):
            self.collect(self.writer.wait())
            self.stop_run(f"non-finite weights at step {step} ({', '.join(bad[:3])}); not saved, {LATEST} stays "
                          f"as it was ({self.kept}): lower --max_lr, then --resume 1")
        if run.env.rank == 0:
            self.collect(self.writer.wait())  # at most one write in flight: the host buffers are reused
            self.writer.submit(self._write, state, (step, reason))
            self.collect(self.writer.poll())  # --async_save 0: done already
        parallel.barrier()

    def close(self) -> None:
        """An exception left a write in flight: it finishes (and says how) before the folder's lock is let go."""
        done = self.writer.wait()
        if done is not None:
            self.run.log(f"CHECKPOINT: saved {step_name(done.tag[0])} and {LATEST}" if done.error is None else
                         f"ERROR: could not write {step_name(done.tag[0])} ({done.error}); {LATEST} stays as it was")
