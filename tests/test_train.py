"""train.py end to end on CPU with the tiny preset: exact resume, crash safety, signals, bad input, the
seed's pair of commands. Every comparison is against an uninterrupted reference run."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO_ROOT, TINY_TRAIN_ARGS, assert_same_weights, checkpoint_weights, run_train, step_losses


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    run_train(out, "--max_steps", 40, "--log_every", 1, "--save_every", 10, "--keep_checkpoints", 0)
    return out, step_losses((out / "train.log").read_text())


def test_resume_is_bit_exact(reference, tmp_path):
    ref_dir, ref_losses = reference
    run_train(tmp_path, "--max_steps", 20, "--log_every", 1, "--save_every", 10)
    r = run_train(tmp_path, "--max_steps", 40, "--log_every", 1, "--save_every", 10, "--resume", 1)
    assert "RESUME: starting from global_step=20" in r.stdout
    losses = step_losses((tmp_path / "train.log").read_text())
    assert min(s for s in losses if s > 20) == 21
    for s in range(21, 41):
        assert losses[s] == ref_losses[s], s
    assert_same_weights(checkpoint_weights(tmp_path, 40), checkpoint_weights(ref_dir, 40))


@pytest.fixture(scope="module")
def stacked_12(tmp_path_factory):
    out = tmp_path_factory.mktemp("stacked")
    run_train(out, "--max_steps", 12, "--log_every", 1, "--save_every", 6, "--stack_micro", 1)
    return out


def test_stacked_resume_is_bit_exact(stacked_12, tmp_path):
    run_train(tmp_path, "--max_steps", 6, "--log_every", 1, "--save_every", 6, "--stack_micro", 1)
    r = run_train(tmp_path, "--max_steps", 12, "--log_every", 1, "--save_every", 6, "--stack_micro", 1, "--resume", 1)
    assert "RESUME: starting from global_step=6" in r.stdout
    assert "micro-batches stacked: 2 x 2 -> 4 (stack_micro 1)" in r.stdout
    losses, ref = (step_losses((d / "train.log").read_text()) for d in (tmp_path, stacked_12))
    assert all(losses[s] == ref[s] for s in range(1, 13))
    assert_same_weights(checkpoint_weights(tmp_path, 12), checkpoint_weights(stacked_12, 12))


def test_stacked_and_accumulated_runs_agree(stacked_12, tmp_path):
    """12 steps accumulating the two micro-batches against the same 12 steps stacked: the same batches, so
    the logged losses and the final weights agree to float32 rounding (not bitwise: summation order)."""
    r = run_train(tmp_path, "--max_steps", 12, "--log_every", 1, "--save_every", 12, "--stack_micro", 0)
    assert "micro-batches accumulated: 2 x 2 (stack_micro 0)" in r.stdout
    assert "| stack_micro 0 |" in r.stdout  # the resolved Switches, logged as the speed path
    acc, stk = (step_losses((d / "train.log").read_text()) for d in (tmp_path, stacked_12))
    assert acc.keys() == stk.keys() == set(range(1, 13))
    for s in acc:
        assert abs(float(acc[s]) - float(stk[s])) <= 1e-4, s  # the log's last digit
    a, b = checkpoint_weights(tmp_path, 12), checkpoint_weights(stacked_12, 12)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-5), k


KILL_IN_SAVE = r"""
import os, signal, sys, torch
sys.path.insert(0, {repo!r})
import smollm2.checkpoint, train
calls = []
real_save = torch.save
def dying_save(obj, f, *a, **k):
    calls.append(1)
    if len(calls) == 2:          # the second checkpoint: write half a file, then die mid-save
        f.write(b"partial checkpoint bytes")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)
smollm2.checkpoint.torch.save = dying_save
sys.argv = ["train.py"] + {args!r}
train.cli(fast_exit=True)
"""


def test_sigkill_during_save_resumes_from_last_complete_checkpoint(reference, tmp_path):
    ref_dir, ref_losses = reference
    args = [*TINY_TRAIN_ARGS, "--out_dir", str(tmp_path), "--max_steps", "40", "--log_every", "1", "--save_every", "10"]
    r = subprocess.run([sys.executable, "-c", KILL_IN_SAVE.format(repo=str(REPO_ROOT), args=args)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == -signal.SIGKILL
    ckpts = tmp_path / "checkpoints"
    latest = torch.load(ckpts / "checkpoint_latest.pt", weights_only=True)
    assert latest["global_step"] == 10
    assert not (ckpts / "checkpoint_step_20.pt").exists()
    r = run_train(tmp_path, "--max_steps", 40, "--log_every", 1, "--save_every", 10, "--resume", 1)
    assert "RESUME: starting from global_step=10" in r.stdout
    assert_same_weights(checkpoint_weights(tmp_path, 40), checkpoint_weights(ref_dir, 40))


def test_corrupt_latest_falls_back_to_newest_valid_step(reference, tmp_path):
    ref_dir, _ = reference
    run_train(tmp_path, "--max_steps", 20, "--log_every", 5, "--save_every", 10)
    latest = tmp_path / "checkpoints" / "checkpoint_latest.pt"
    latest.unlink()
    latest.write_bytes(b"not a checkpoint")
    (tmp_path / "checkpoints" / "checkpoint_step_20.pt").unlink()  # newest left: step 10
    r = run_train(tmp_path, "--max_steps", 40, "--log_every", 5, "--save_every", 10, "--resume", 1)
    assert "WARNING" in r.stderr and "checkpoint_step_10.pt" in r.stderr
    assert "RESUME: starting from global_step=10" in r.stdout
    assert_same_weights(checkpoint_weights(tmp_path, 40), checkpoint_weights(ref_dir, 40))


def test_sigterm_saves_exits_zero_and_resume_matches(reference, tmp_path):
    ref_dir, _ = reference
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), *TINY_TRAIN_ARGS, "--out_dir", str(tmp_path), "--max_steps", "40",
           "--log_every", "1", "--save_every", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "train.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and re.search(r"^step\s+3/", log.read_text(), re.M)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "STOP: SIGTERM received" in out
    saved = torch.load(tmp_path / "checkpoints" / "checkpoint_latest.pt", weights_only=True)["global_step"]
    assert 3 <= saved < 40
    run_train(tmp_path, "--max_steps", 40, "--log_every", 1, "--save_every", 100, "--resume", 1)
    assert_same_weights(checkpoint_weights(tmp_path, 40), checkpoint_weights(ref_dir, 40))


def test_mismatched_checkpoint_is_refused(tmp_path):
    run_train(tmp_path, "--max_steps", 2, "--log_every", 1, "--save_every", 2)
    log_before = (tmp_path / "train.log").read_text()
    r = run_train(tmp_path, "--max_steps", 4, "--resume", 1, "--tie_word_embeddings", 0, check=False)
    assert r.returncode == 2 and "different model" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "train.log").read_text() == log_before


def _bad(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    return str(p)


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "short", "seq_len", "batch", "accum", "model",
                                  "device", "resume_nothing", "lr", "residual_without_autocast"])
def test_bad_input_exits_2_with_one_line(tmp_path, case):
    extra = {
        "missing": ["--input_file", str(tmp_path / "nope.txt")],
        "empty": ["--input_file", _bad(tmp_path, "empty.txt", b"")],
        "binary": ["--input_file", _bad(tmp_path, "bin.txt", bytes(range(256)) * 10)],
        "short": ["--input_file", _bad(tmp_path, "short.txt", b"To be or not to be.")],
        "seq_len": ["--seq_len", "4096"],
        "batch": ["--batch_size", "0"],
        "accum": ["--grad_accum", "0"],
        "model": ["--model", "gpt5"],
        "device": ["--device", "tpu"],
        "resume_nothing": ["--resume", "1"],
        "lr": ["--max_lr", "-1"],
        "residual_without_autocast": ["--residual_dtype", "bf16"],  # CPU: no autocast, a bf16 stream would be a no-op
    }[case]
    r = run_train(tmp_path / "out", "--max_steps", 2, *extra, check=False)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), r.stderr
    if case == "residual_without_autocast":
        assert "--residual_dtype bf16" in lines[0]
    assert "Traceback" not in r.stderr


def test_seed_commands_scaled_down(tmp_path):
    """The seed's pair (--max_steps N --resume 0, then N+k --resume 1) with its flags, scaled down."""
    cadence = ["--log_every", 5, "--save_every", 10, "--sample_every", 10]
    run_train(tmp_path, "--max_steps", 20, "--resume", 0, *cadence)
    run_train(tmp_path, "--max_steps", 25, "--resume", 1, *cadence)
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert sum(l.startswith("Device: ") for l in lines) == 2
    assert sum(l.startswith("Args: {") for l in lines) == 2
    typed = json.loads(next(l for l in lines if l.startswith("Args: "))[len("Args: "):])
    assert typed["fused_loss"] == -1 and typed["residual_dtype"] == "auto"  # as typed; the resolved ones follow
    assert any(l.startswith("Speed path: autocast off (fp32) | compile 0 |") and "| fused_loss 1 |" in l for l in lines)
    assert any(l.startswith("Model params: 3,219,776") for l in lines)
    assert lines.count("Starting from scratch (random init).") == 1
    i_resume = next(i for i, l in enumerate(lines) if l.startswith("RESUME: starting from global_step=20"))
    steps = [int(m.group(1)) for l in lines if (m := re.match(r"step\s+(\d+)/(\d+) \| lr", l))]
    assert steps == [5, 10, 15, 20, 25]
    after = [int(m.group(1)) for l in lines[i_resume:] if (m := re.match(r"step\s+(\d+)/\d+ \| lr", l))]
    assert after == [25]
    assert [l for l in lines if l.startswith("CHECKPOINT:")] == [
        "CHECKPOINT: saved checkpoint_step_10.pt and checkpoint_latest.pt",
        "CHECKPOINT: saved checkpoint_step_20.pt and checkpoint_latest.pt",
        "CHECKPOINT: saved checkpoint_step_25.pt and checkpoint_latest.pt"]
    assert [int(m.group(1)) for l in lines if (m := re.match(r"\[sample @ step (\d+)\]", l))] == [1, 10, 20]
    for l in lines:
        if l.startswith("step") and "| lr" in l:
            assert re.match(r"step\s+\d+/\d+ \| lr \d\.\d{3}e-\d\d \| loss \d+\.\d{4} \| grad_norm \S+ \| "
                            r"ms/step \S+ \| tok/s \S+ \| mfu \S+$", l), l
    walls = [json.loads(l[len("WALL: "):]) for l in lines if l.startswith("WALL: ")]
    assert len(walls) == 2
    for w in walls:  # the start-up by part, and the loop by part, each adding up to its total
        assert list(w["startup_parts"]) == ["imports", "checkpoint_read", "tokenizer_data", "model_optimizer", "other"]
        assert w["startup_s"] == pytest.approx(sum(w["startup_parts"].values()), abs=0.01)
        parts = ("compile_s", "steps_s", "save_stall_s", "final_write_s", "val_s", "sample_s", "other_s")
        assert w["loop_s"] == pytest.approx(sum(w[k] for k in parts), abs=0.01)
        assert w["final_write_s"] >= 0 and w["saves"] >= 1
    assert_consumers_read_the_run(tmp_path)


def test_compile_scope_auto_follows_the_run_length_and_a_resume_keeps_it():
    """--compile_scope auto: each layer compiled alone for a short single-process run, the whole model for a
    long one or under DDP; a resume compiles what its run compiled, whatever its --max_steps now says."""
    import train
    from smollm2.switches import AUTO_BLOCKS_MAX_STEPS

    cuda = torch.device("cuda")
    args = train.parse_args(["--max_steps", "5000"])
    assert args.compile_scope == "auto"
    assert train.resolve_switches(args, cuda, 1).compile_scope == "blocks"
    assert train.resolve_switches(args, cuda, 2).compile_scope == "model"
    long = train.parse_args(["--max_steps", str(AUTO_BLOCKS_MAX_STEPS + 1)])
    assert train.resolve_switches(long, cuda, 1).compile_scope == "model"
    assert train.resolve_switches(train.parse_args(["--max_steps", "5000", "--compile_scope", "model"]),
                                  cuda, 1).compile_scope == "model"
    # a resume: the checkpoint's scope, not the one the new --max_steps would pick
    for saved in ("model", "blocks"):
        ckpt = {"switches": {"compile_scope": saved}}
        assert train.kept_compile_scope(long, train.resolve_switches(long, cuda, 1), ckpt).compile_scope == saved
    assert train.kept_compile_scope(long, train.resolve_switches(long, cuda, 1), {}).compile_scope == "model"
    given = train.parse_args(["--max_steps", "5000", "--compile_scope", "blocks"])  # given on purpose: kept
    assert train.kept_compile_scope(given, train.resolve_switches(given, cuda, 1),
                                    {"switches": {"compile_scope": "model"}}).compile_scope == "blocks"


def assert_consumers_read_the_run(out_dir):
    """What train.py wrote (metrics.jsonl and train.log of a run and its resume), read the two ways the
    consumers read runs: the records agree with the human log line for line, so a change to either format
    that the reader misses fails here; update_readme.py fills its block from the same records."""
    from smollm2.metrics import log_events, read_events, summarize
    import update_readme
    log = out_dir / "train.log"
    records, parsed = summarize(read_events(str(log))), summarize(log_events(log.read_text()))
    assert (out_dir / "metrics.jsonl").exists() and records.resumes == parsed.resumes == [20]
    assert [(s, f"{v:.4f}") for s, v in records.train] == [(s, f"{v:.4f}") for s, v in parsed.train]
    assert [s for s, _ in records.train] == [5, 10, 15, 20, 25]
    assert records.checkpoints == parsed.checkpoints == 3 and records.runs == parsed.runs == 2
    assert [(d["first_step"], d["last_step"]) for d in records.done] == [(1, 20), (21, 25)] == \
        [(d["first_step"], d["last_step"]) for d in parsed.done]
    assert [w.keys() for w in records.walls] == [w.keys() for w in parsed.walls] and len(records.walls) == 2
    assert records.header["params"] == parsed.header["params"] == 3_219_776
    assert records.header["device_name"] == parsed.header["device_name"]
    readme = out_dir / "R.md"
    readme.write_text("<!-- TRAIN_LOG_BEGIN -->\n<!-- TRAIN_LOG_END -->\n<!-- ABLATION_TABLE_BEGIN -->\n"
                      "<!-- ABLATION_TABLE_END -->\n")
    assert update_readme.main(["--readme", str(readme), "--train_log", str(log), "--loss_plot",
                               str(out_dir / "loss.png"), "--ablation_csv", str(out_dir / "none.csv")]) == 0
    block = readme.read_text()
    assert "steps 5 → 25" in block and "3 checkpoint saves logged" in block and "resumed at step 20" in block
    assert "| part | run 1 (from scratch) | run 2 (resume) |" in block
    assert "interpreter, imports, flag checks" in block and "last checkpoint: its write finishing" in block


def test_tensorboard_without_the_package_is_a_usage_error(tmp_path, monkeypatch):
    import train
    from smollm2.common import UsageError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an install without it raises
    with pytest.raises(UsageError, match="--tensorboard 1 needs the tensorboard package"):
        train.main([*TINY_TRAIN_ARGS, "--out_dir", str(tmp_path / "out"), "--tensorboard", "1"])
    assert not (tmp_path / "out").exists()


def test_the_script_exits_without_teardown_but_after_atexit_handlers_and_flushed_streams(tmp_path):
    # train.py as a script leaves through exit_without_teardown: the status given, every atexit handler run
    # (inductor's compile workers register theirs), buffered stdout and stderr written; only the interpreter's
    # own teardown is skipped.
    marker = tmp_path / "atexit_ran"
    code = (f"import atexit, sys; sys.path.insert(0, {str(REPO_ROOT)!r}); import train; "
            f"atexit.register(lambda: open({str(marker)!r}, 'w').close()); "
            "sys.stdout.write('buffered out'); sys.stderr.write('buffered err'); train.exit_without_teardown(3)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and r.stdout == "buffered out" and r.stderr == "buffered err"
    assert marker.exists()
