"""Checkpoints written in the background (smollm2.checkpoint): the file is the one a synchronous
save writes, a SIGKILL mid-write leaves the previous latest, a SIGTERM mid-write exits 0 only once the
write is on disk, and a resume from either is bit-exact with an uninterrupted run. CPU, tiny preset."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO_ROOT, TINY_TRAIN_ARGS, assert_same_weights, checkpoint_weights, run_train, step_losses

from smollm2.checkpoint import CheckpointWriter  # noqa: E402
from smollm2.checkpoint import load_checkpoint, rng_state, save_checkpoint  # noqa: E402

RUN = ["--max_steps", 12, "--log_every", 1, "--save_every", 4]


def assert_same_tree(a, b, where="ckpt"):
    assert type(a) is type(b), where
    if torch.is_tensor(a):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_background_save_writes_what_a_synchronous_save_writes(tmp_path):
    from smollm2_config import get_config
    from smollm2_model import SmolLM2ForCausalLM
    from smollm2.training import StepConfig, TrainStep, build_optimizer, optimizer_state_for_checkpoint

    torch.manual_seed(0)
    cfg = get_config("tiny")
    model = SmolLM2ForCausalLM(cfg)
    cpu = torch.device("cpu")
    opt = build_optimizer(model, 3e-4, 0.1, cpu)
    train_step = TrainStep(model, model, opt, StepConfig(grad_clip=1.0, fused_loss=True), cpu)
    x = torch.randint(0, 1000, (1, 2, 16))

    def state(step):
        return dict(global_step=step, run_id="abc", model={k: v.detach() for k, v in model.state_dict().items()},
                    optimizer=optimizer_state_for_checkpoint(opt), rng=rng_state(), data={"next_step": step + 1},
                    model_config=cfg.to_dict(), args={"seed": 1, "lr": 3e-4, "name": "x"})

    writer = CheckpointWriter(background=True, pin=False)
    for step in (1, 2):  # the second save reuses the first one's host buffers
        train_step(x, x)
        save_checkpoint(str(tmp_path / f"sync_{step}.pt"), state(step))
        writer.submit(lambda host, s=step: save_checkpoint(str(tmp_path / f"async_{step}.pt"), host), state(step), step)
        train_step(x, x)  # training goes on while the file is written: the snapshot must not see it
        done = writer.wait()
        assert done.tag == step and done.error is None
        a, s = (load_checkpoint(str(tmp_path / f"{kind}_{step}.pt")) for kind in ("async", "sync"))
        assert_same_tree(a, s)
        # the tied matrix is one tensor in both files, as torch.save keeps it
        raw = torch.load(tmp_path / f"async_{step}.pt", weights_only=True)["model"]
        assert raw["lm_head.weight"].data_ptr() == raw["model.embed_tokens.weight"].data_ptr()
        if step == 1:
            buffers = {k: v.data_ptr() for k, v in writer.snapshot.buffers.items()}
    assert {k: v.data_ptr() for k, v in writer.snapshot.buffers.items()} == buffers


def test_buffers_reserved_in_the_background_are_the_ones_the_save_fills(tmp_path):
    """reserve() allocates the host buffers in a thread (train.py: after the first step); the first save then
    copies into exactly those buffers and writes what a synchronous save writes."""
    state = {"model": {"w": torch.randn(64, 32), "b": torch.randn(32)}, "optimizer": {"state": {0: {"m": torch.randn(64, 32)}}},
             "step": 3}
    writer = CheckpointWriter(background=True, pin=False)
    writer.reserve({"model": state["model"], "optimizer": state["optimizer"]})
    assert writer.wait() is None  # a reservation is no write: nothing to report
    reserved = {k: v.data_ptr() for k, v in writer.snapshot.buffers.items()}
    assert len(reserved) == 3
    writer.submit(lambda host: save_checkpoint(str(tmp_path / "a.pt"), host), state, "a")
    assert writer.wait().error is None
    assert {k: v.data_ptr() for k, v in writer.snapshot.buffers.items()} == reserved
    save_checkpoint(str(tmp_path / "s.pt"), state)
    assert_same_tree(torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "s.pt", weights_only=True))


def test_a_failed_background_write_is_reported_not_lost(tmp_path):
    def fail(_):
        raise OSError(28, "No space left on device")
    writer = CheckpointWriter(background=True, pin=False)
    writer.submit(fail, {"w": torch.ones(3)}, 7)
    done = writer.wait()
    assert done.tag == 7 and isinstance(done.error, OSError) and writer.wait() is None


# The writer thread blocks after writing the temporary of step {block} (before the rename) until the file
# {go} exists, having written its thread's name into {marker}: a write in flight for as long as the test
# wants, with no timing to guess.
BLOCK_IN_WRITE = r"""
import os, sys, threading, time, torch
sys.path.insert(0, {repo!r})
import smollm2.checkpoint, train
real_save = torch.save
def blocking_save(obj, f, *a, **k):
    real_save(obj, f, *a, **k)
    if obj["global_step"] == {block}:
        with open({marker!r}, "w") as m:
            m.write(threading.current_thread().name)
        while not os.path.exists({go!r}):
            time.sleep(0.05)
smollm2.checkpoint.torch.save = blocking_save
sys.argv = ["train.py"] + {args!r}
train.cli(fast_exit=True)
"""


def start_blocked(out_dir, block, tmp_path):
    marker, go = tmp_path / "writing", tmp_path / "go"
    args = [*TINY_TRAIN_ARGS, "--out_dir", str(out_dir), *map(str, RUN)]
    code = BLOCK_IN_WRITE.format(repo=str(REPO_ROOT), block=block, marker=str(marker), go=str(go), args=args)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, marker, go


def wait_for(what, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if what():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened; exit status {proc.poll()}: {proc.stderr.read() if proc.poll() else ''}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    run_train(out, *RUN, "--async_save", 0)
    return out


def test_sigkill_during_a_background_write_leaves_the_previous_latest(reference, tmp_path):
    out = tmp_path / "run"
    proc, marker, _ = start_blocked(out, 8, tmp_path)
    log = out / "train.log"
    try:
        # step 8's write is stuck before its rename; training goes on to step 12, whose save waits for it
        wait_for(lambda: marker.exists() and log.exists() and "step    12/" in log.read_text(), proc)
        assert marker.read_text() == "checkpoint-writer"
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    ckpts = out / "checkpoints"
    assert load_checkpoint(str(ckpts / "checkpoint_latest.pt"))["global_step"] == 4
    assert not (ckpts / "checkpoint_step_8.pt").exists()
    assert any(".tmp." in n for n in os.listdir(ckpts))  # killed mid-write, as promised: only a temporary
    r = run_train(out, *RUN, "--resume", 1)
    assert "RESUME: starting from global_step=4" in r.stdout
    assert_same_weights(checkpoint_weights(out, 12), checkpoint_weights(reference, 12))


def test_sigterm_during_a_background_write_exits_0_once_it_is_on_disk(reference, tmp_path):
    out = tmp_path / "run"
    proc, marker, go = start_blocked(out, 4, tmp_path)
    try:
        wait_for(marker.exists, proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None  # the write of step 4 is still in flight: no exit before it lands
        go.touch()
        out_text, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = (out / "train.log").read_text().splitlines()
    stop = next(i for i, l in enumerate(lines) if l.startswith("STOP: SIGTERM received"))
    saved = [l for l in lines[:stop] if l.startswith("CHECKPOINT:")]
    assert saved[0] == "CHECKPOINT: saved checkpoint_step_4.pt and checkpoint_latest.pt"
    assert saved[-1].endswith("(stopping on SIGTERM)")
    ckpts = out / "checkpoints"
    last = load_checkpoint(str(ckpts / "checkpoint_latest.pt"))["global_step"]
    assert 4 < last < 12 and f"saved step {last}." in lines[stop]
    assert not [n for n in os.listdir(ckpts) if ".tmp." in n]
    run_train(out, *RUN, "--resume", 1)
    assert_same_weights(checkpoint_weights(out, 12), checkpoint_weights(reference, 12))
    losses, ref = (step_losses((d / "train.log").read_text()) for d in (out, reference))
    assert all(losses[s] == ref[s] for s in range(last + 1, 13))
